"""gzip request bodies on the API: inflated before the views, limits after inflation, bombs and junk refused."""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest

from personalization import redis_keys
from personalization.request_encoding import InflatedBodyTooLarge, gzip_inflate
from personalization.services import api_key_create
from tests.embedded_test_env import PROJECT_ROOT
from tests.integration_helpers import child_env
from tests.signals_app.helpers import stream_lengths
from tests.test_run_platform import _free_port, _wait_for

pytestmark = pytest.mark.django_db

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
VIEW = {"event_id": "e-1", "type": "view", "user_id": "u1", "item_id": "sku-1"}


def post_gzip(client, path: str, body: bytes, encoding: str = "gzip"):
    return client.post(path, body, content_type="application/json", headers={"Content-Encoding": encoding})


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[start : start + size] for start in range(0, len(data), size)]


def test_a_gzip_event_is_ingested_as_if_sent_plain(api_client, clean_redis):
    response = post_gzip(api_client, "/api/v1/events", gzip.compress(orjson.dumps(VIEW)))

    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"sku-1"]


def test_x_gzip_and_several_gzip_members_are_one_body(api_client):
    body = orjson.dumps({"events": [VIEW, {**VIEW, "event_id": "e-2"}]})
    two_members = gzip.compress(body[:20]) + gzip.compress(body[20:])

    response = post_gzip(api_client, "/api/v1/events", two_members, encoding="x-gzip")

    assert response.status_code == 202
    assert response.json()["accepted"] == 2


def test_the_endpoints_size_limit_applies_to_the_inflated_body(api_client, clean_redis):
    event = {**VIEW, "context": {"padding": "x" * (1024 * 1024)}}
    compressed = gzip.compress(orjson.dumps(event))
    assert len(compressed) < 10_000  # small on the wire

    response = post_gzip(api_client, "/api/v1/events", compressed)

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["errors"] == {"body": [f"At most {1024 * 1024} bytes."]}
    assert stream_lengths() == 0


def test_a_decompression_bomb_is_413_and_nothing_is_ingested(api_client, settings, clean_redis):
    settings.API_INFLATED_BODY_MAX_BYTES = 1024 * 1024
    bomb = gzip.compress(b'{"padding": "' + b"0" * (64 * 1024 * 1024) + b'"}', compresslevel=9)

    response = post_gzip(api_client, "/api/v1/events", bomb)

    assert response.status_code == 413
    assert response.json() == {
        "detail": "The inflated body must be at most 1024 KB.",
        "code": "payload_too_large",
        "errors": {"body": [f"At most {1024 * 1024} bytes (inflated, if sent compressed)."]},
        "message": "The inflated body must be at most 1024 KB.",
    }
    assert stream_lengths() == 0


def _bomb() -> bytes:
    """Refused with 413 if it is ever inflated."""
    return gzip.compress(b'{"padding": "' + b"0" * (16 * 1024 * 1024) + b'"}', compresslevel=9)


def test_a_gzip_body_with_a_wrong_key_is_401_without_being_inflated(client, settings):
    settings.API_INFLATED_BODY_MAX_BYTES = 1024 * 1024

    response = post_gzip_as(client, "/api/v1/events", _bomb(), authorization="Bearer wrong-key")

    assert (response.status_code, response.json()["code"]) == (401, "authentication_failed")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_an_address_out_of_wrong_keys_gets_429_before_its_keyless_gzip_is_inflated(client, settings):
    # Keyless: the Segment routes read their write key from the (inflated) body.
    settings.API_INFLATED_BODY_MAX_BYTES = 1024 * 1024
    settings.API_AUTH_FAILURES_MAX = 2
    for _ in range(2):
        assert post_gzip_as(client, "/api/v1/events", b"", authorization="Bearer wrong").status_code == 401

    response = post_gzip_as(client, "/api/v1/segment/v1/batch", _bomb())

    assert (response.status_code, response.json()["code"]) == (429, "rate_limited")
    assert int(response["Retry-After"]) > 0


def post_gzip_as(client, path: str, body: bytes, *, authorization: str = ""):
    headers = {"Content-Encoding": "gzip", **({"Authorization": authorization} if authorization else {})}
    return client.post(path, body, content_type="application/json", headers=headers)


def test_inflation_stops_at_the_cap_without_reading_the_rest():
    bomb = gzip.compress(b"0" * (32 * 1024 * 1024), compresslevel=9)
    parts = chunks(bomb)
    consumed = []

    def feed():
        for part in parts:
            consumed.append(part)
            yield part

    with pytest.raises(InflatedBodyTooLarge):
        gzip_inflate(feed(), max_bytes=1024 * 1024)
    assert len(consumed) < len(parts) // 10


def test_input_that_inflates_to_little_is_capped_too():
    # Empty stored blocks: a valid deflate stream, much longer than what it inflates to.
    padding = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    stream = padding.compress(b"{}") + b"".join(padding.flush(zlib.Z_FULL_FLUSH) for _ in range(5000))
    stream += padding.flush()

    with pytest.raises(InflatedBodyTooLarge):
        gzip_inflate(chunks(stream), max_bytes=len(stream) - 1)
    assert gzip_inflate(chunks(stream), max_bytes=len(stream)) == b"{}"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"event_id": "e-1"}', "incorrect header check"),
        (gzip.compress(orjson.dumps(VIEW), mtime=0)[:-12], "ends before its end marker"),
        (gzip.compress(orjson.dumps(VIEW), mtime=0) + b"trailing junk", "incorrect header check"),
    ],
    # Ids that do not change with the clock (gzip's header holds a time): every worker collects the same tests.
    ids=["not-gzip", "truncated", "trailing-junk"],
)
def test_a_body_that_is_not_gzip_is_400_naming_the_problem(api_client, body, problem, clean_redis):
    response = post_gzip(api_client, "/api/v1/events", body)

    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "invalid_gzip"
    assert payload["detail"].startswith("The body is not valid gzip: ")
    assert problem in payload["detail"]
    assert payload["message"] == payload["detail"]
    assert stream_lengths() == 0


def test_an_encoding_the_api_does_not_take_is_415(api_client):
    response = post_gzip(api_client, "/api/v1/events", b"\x1b\x00", encoding="br")

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_content_encoding"
    assert response.json()["errors"] == {"body": ["Content-Encoding 'br' is not supported; send gzip or no encoding."]}


def test_identity_encoding_is_a_plain_body(api_client):
    response = post_gzip(api_client, "/api/v1/events", orjson.dumps(VIEW), encoding="identity")

    assert response.status_code == 202
    assert response.json()["accepted"] == 1


def test_a_gzip_json_body_reaches_drf_parsers_too(api_client, django_capture_on_commit_callbacks, clean_redis):
    body = gzip.compress(orjson.dumps({"traits": {"plan": "gold"}}))

    with django_capture_on_commit_callbacks(execute=True):
        response = api_client.generic(
            "PUT", "/api/v1/users/u1", body, content_type="application/json", headers={"Content-Encoding": "gzip"}
        )

    assert response.status_code == 201
    assert orjson.loads(clean_redis.get(redis_keys.user_traits("u1"))) == {"plan": "gold"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/api/v1/items/sku-1"), ("POST", "/api/v1/items/batch"), ("PUT", "/api/v1/users/u1"),
     ("POST", "/api/v1/events"), ("POST", "/api/v1/segment/v1/batch"), ("POST", "/api/v1/users/u1/identify")],
)  # fmt: skip
def test_a_body_past_the_cap_is_a_json_413_on_every_endpoint(api_client, settings, method, path):
    settings.API_INFLATED_BODY_MAX_BYTES = 64 * 1024

    response = api_client.generic(method, path, b" " * (64 * 1024 + 1), content_type="application/json")

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["errors"] == {"body": [f"At most {64 * 1024} bytes (inflated, if sent compressed)."]}


def test_a_batch_over_djangos_upload_size_is_read_as_json(api_client, settings):
    # Past DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), which Django answers with an HTML 400 when it reads the body.
    items = [{"item_id": f"i{n}", "title": "T", "description": "d" * 2600} for n in range(1001)]
    body = orjson.dumps({"items": items})
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    response = api_client.generic("POST", "/api/v1/items/batch", body, content_type="application/json")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["items"]


def test_a_chunked_body_is_refused_411_by_a_server_that_does_not_end_it(live_server, raw_api_key):
    connection = http.client.HTTPConnection(live_server.thread.host, live_server.thread.port, timeout=10)
    connection.request(
        "POST", "/api/v1/events", body=iter([orjson.dumps(VIEW)]),
        headers={"Authorization": f"Bearer {raw_api_key}", "Content-Type": "application/json"},
    )  # fmt: skip
    response = connection.getresponse()

    assert response.status == 411
    assert orjson.loads(response.read())["code"] == "length_required"


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_through_gunicorn(clean_redis):
    key = api_key_create(name="chunked").raw_key
    port = _free_port()
    web = subprocess.Popen(
        [GUNICORN, "config.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/healthz", time.monotonic() + 30)
        body = orjson.dumps({"events": [VIEW, {**VIEW, "event_id": "e-2"}]})
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request(
            "POST", "/api/v1/events", body=iter([body[:10], body[10:40], body[40:]]),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )  # fmt: skip
        response = connection.getresponse()
        payload = orjson.loads(response.read())
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=10)

    assert response.status == 202, payload
    assert payload["accepted"] == 2
    assert stream_lengths() == 2
