"""GET /api/v1/recommendations answered before Django's request handling (`surface_app.fast_path`), called through
the project's WSGI application as gunicorn calls it."""

from __future__ import annotations

import io
import json
import sys

import pytest
from django.core.handlers.wsgi import WSGIHandler
from prometheus_client import REGISTRY

from config.wsgi import application
from surface_app.fast_path import recommendations_fast_path
from tests.factories import ItemFactory
from tests.log_capture import json_log_lines  # noqa: F401  (fixture)
from tests.signals_app.helpers import ingest_views

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def test_transaction_kept_open():
    """As Django's test client does: the request signals would close the test's connection, in its transaction."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def _call(
    *,
    query: str = "",
    key: str | None = None,
    method: str = "GET",
    host: str = "127.0.0.1",
    app=application,
    **extra: str,
):
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/api/v1/recommendations", "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host,
        "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http", **extra,
    }  # fmt: skip
    if key:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    answer: dict[str, object] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        answer["status"], answer["headers"] = int(status.split()[0]), dict(headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("surface_api_fast_path_total", {"outcome": outcome}) or 0.0


@pytest.fixture
def shop(clean_redis):
    ItemFactory(external_id="p1")
    ItemFactory(external_id="p2")
    ingest_views({"p1": 5, "p2": 10})


@pytest.fixture
def django_calls(monkeypatch) -> list[str]:
    """The requests Django's own handler answered."""
    calls: list[str] = []
    handle = WSGIHandler.__call__

    def counted(self, environ, start_response):
        calls.append(environ["REQUEST_METHOD"])
        return handle(self, environ, start_response)

    monkeypatch.setattr(WSGIHandler, "__call__", counted)
    return calls


def test_a_storefronts_request_is_answered_before_django_as_the_view_answers_it(
    shop, raw_api_key, api_client, django_calls
):
    served = _count("served")

    status, headers, body = _call(query="user_id=stranger&k=2", key=raw_api_key)

    assert status == 200 and django_calls == []
    assert _count("served") == served + 1
    payload = json.loads(body)
    assert [item["item_id"] for item in payload["items"]] == ["p2", "p1"]
    # The view's answer to the same request: the same fields and items, and the same headers.
    view = api_client.get("/api/v1/recommendations", {"user_id": "stranger-too", "k": 2})
    assert set(payload) == set(view.json())
    assert payload["items"] == [{**item, "score": item["score"]} for item in view.json()["items"]]
    assert set(headers) == set(view.headers) - {"Vary"}  # DRF's test client asks with Accept; this did not
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("query", "key", "method", "status"),
    [
        ("user_id=u&k=0", "valid", "GET", 400),  # the view names the field
        ("user_id=u", "unknown", "GET", 401),
        ("user_id=u", None, "GET", 401),
        ("user_id=u", "valid", "POST", 405),
    ],
)
def test_anything_but_the_plain_case_is_answered_by_the_view(
    shop, raw_api_key, django_calls, query, key, method, status
):
    passed = _count("passed_to_django")

    answer, headers, body = _call(query=query, key={"valid": raw_api_key, "unknown": "nope"}.get(key), method=method)

    assert (answer, django_calls) == (status, [method])
    assert _count("passed_to_django") == passed + 1
    if status == 400:
        assert "k" in json.loads(body)["errors"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")


def test_hosts_and_https_are_checked_by_django_as_for_any_request(shop, raw_api_key, django_calls, settings):
    settings.ALLOWED_HOSTS = ["shop.example"]
    assert _call(query="user_id=u", key=raw_api_key, host="evil.example")[0] == 400
    assert _call(query="user_id=u", key=raw_api_key, host="shop.example")[0] == 200
    assert django_calls == ["GET"]  # only the refused host

    # Django's middleware reads these settings when it is loaded: a new application, as after a deployment.
    settings.SECURE_SSL_REDIRECT = True
    app = recommendations_fast_path(WSGIHandler())
    assert _call(query="user_id=u", key=raw_api_key, host="shop.example", app=app)[0] == 301
    status, _, _ = _call(
        query="user_id=u", key=raw_api_key, host="shop.example", app=app, HTTP_X_FORWARDED_PROTO="https"
    )
    assert status == 301  # no proxy header is trusted unless SECURE_PROXY_SSL_HEADER says so
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    app = recommendations_fast_path(WSGIHandler())
    status, headers, _ = _call(
        query="user_id=u", key=raw_api_key, host="shop.example", app=app, HTTP_X_FORWARDED_PROTO="https"
    )
    assert status == 200 and headers["Strict-Transport-Security"] == "max-age=3600"
    assert django_calls == ["GET", "GET", "GET"]


def test_a_request_id_is_returned_and_kept_when_the_view_answers(shop, raw_api_key, django_calls, json_log_lines):  # noqa: F811
    status, headers, _ = _call(query="user_id=u", key=raw_api_key, HTTP_X_REQUEST_ID="edge-9c1f")
    assert (status, headers["X-Request-ID"]) == (200, "edge-9c1f")
    status, headers, _ = _call(query="user_id=u", key=raw_api_key, HTTP_X_REQUEST_ID="a\tb")
    assert status == 200 and len(headers["X-Request-ID"]) == 32

    # Passed to Django: the id the fast path gave the request is the one the view's lines and response carry.
    status, headers, _ = _call(query="user_id=u&k=0", key=raw_api_key)

    assert (status, django_calls) == (400, ["GET"])
    (line,) = json_log_lines()
    assert (line["logger"], line["status_code"]) == ("django.request", 400)
    assert line["request_id"] == headers["X-Request-ID"] and len(headers["X-Request-ID"]) == 32


def test_a_key_over_its_rate_is_answered_429_here_with_the_views_body_and_headers(shop, django_calls):
    from personalization.services import api_key_create

    key = api_key_create(name="page", scope="public", rate_limit_per_second=1).raw_key
    limited = _count("rate_limited")

    first = _call(query="user_id=u", key=key)
    status, headers, body = _call(query="user_id=u", key=key)

    assert (first[0], status, django_calls) == (200, 429, [])
    assert _count("rate_limited") == limited + 1
    assert headers["Retry-After"] == "1" and headers["RateLimit"] == '"key";r=0;t=1'
    assert headers["RateLimit-Policy"] == '"key";q=1;w=1'
    assert json.loads(body)["code"] == "rate_limited"


def test_a_bound_key_without_its_shoppers_token_is_answered_by_the_view(shop, django_calls, settings):
    from personalization.access import shopper_token_sign
    from personalization.services import api_key_create

    settings.SHOPPER_TOKEN_SECRET = "fast-path-secret"
    key = api_key_create(name="page", scope="public", requires_shopper_token=True).raw_key

    own = _call(query="user_id=u1", key=key, HTTP_X_SHOPPER_TOKEN=shopper_token_sign("u1"))
    other = _call(query="user_id=u2", key=key, HTTP_X_SHOPPER_TOKEN=shopper_token_sign("u1"))

    assert (own[0], other[0], django_calls) == (200, 403, ["GET"])
    assert json.loads(other[2])["code"] == "shopper_token_mismatch"


def test_a_wrong_key_counts_once_against_its_address_though_both_paths_check_it(shop, django_calls, settings):
    settings.API_AUTH_FAILURES_MAX = 2

    statuses = [_call(query="user_id=u", key=f"pk_wrong_{n}")[0] for n in range(3)]

    assert statuses == [401, 401, 429] and django_calls == ["GET"] * 3
