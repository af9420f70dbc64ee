"""Request rate limits (`personalization.rate_limits`): each key's token bucket in Redis, 429 with the IETF
headers, wrong keys limited per client address, unknown keys remembered so that repeating one costs no query."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from personalization import rate_limits, redis_keys
from personalization.models import ApiScope
from personalization.services import api_key_create
from tests.conftest import dead_redis
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


def _client(raw_key: str, address: str = "10.0.0.1", **headers: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=address)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}", **headers)
    return client


def _rewind(clean_redis, key: str, seconds: float) -> None:
    """As if the bucket had last been counted `seconds` earlier (Redis's clock): time passes without a sleep."""
    now_seconds, now_micros = clean_redis.time()
    clean_redis.hset(key, "s", str(now_seconds * 1_000_000 + now_micros - int(seconds * 1_000_000)))


def test_a_key_over_its_rate_gets_429_with_the_ietf_headers(clean_redis):
    created = api_key_create(name="slow", scope=ApiScope.SERVER, rate_limit_per_second=2)
    client = _client(created.raw_key)

    answers = [client.get("/api/v1/items/nope") for _ in range(3)]

    assert [answer.status_code for answer in answers] == [404, 404, 429]
    refused = answers[2]
    assert refused["Retry-After"] == "1"
    assert refused["RateLimit-Policy"] == '"key";q=2;w=1'
    assert refused["RateLimit"] == '"key";r=0;t=1'
    assert refused.json()["code"] == "rate_limited" and refused.json()["errors"] == {}
    bucket = redis_keys.api_key_rate_bucket(created.api_key.pk)
    assert float(clean_redis.hget(bucket, "t")) < 1 and 0 < clean_redis.pttl(bucket) <= 2000

    _rewind(clean_redis, bucket, 0.5)  # a token back (2 a second)
    assert client.get("/api/v1/items/nope").status_code == 404
    assert client.get("/api/v1/items/nope").status_code == 429


def test_a_keys_own_rate_overrides_its_scopes_default_and_buckets_are_per_key(settings):
    settings.API_RATE_LIMIT_DEFAULTS = {**settings.API_RATE_LIMIT_DEFAULTS, "public": 1}
    by_default = _client(api_key_create(name="page", scope=ApiScope.PUBLIC).raw_key)
    own_rate = _client(api_key_create(name="page 2", scope=ApiScope.PUBLIC, rate_limit_per_second=3).raw_key)

    assert [by_default.get("/api/v1/items/nope/similar").status_code for _ in range(2)] == [404, 429]
    assert [own_rate.get("/api/v1/items/nope/similar").status_code for _ in range(4)] == [404, 404, 404, 429]


def test_recommendations_take_the_token_in_their_state_round_trip(clean_redis):
    ItemFactory(external_id="p1")
    created = api_key_create(name="page", scope=ApiScope.PUBLIC, rate_limit_per_second=1)
    client = _client(created.raw_key)

    first = client.get("/api/v1/recommendations", {"user_id": "u1"})
    second = client.get("/api/v1/recommendations", {"user_id": "u1"})

    assert (first.status_code, second.status_code) == (200, 429)
    assert second["RateLimit-Policy"] == '"key";q=1;w=1' and second["RateLimit"] == '"key";r=0;t=1'
    assert clean_redis.exists(redis_keys.api_key_rate_bucket(created.api_key.pk))


def test_the_state_round_trip_loads_the_script_again_after_redis_forgot_it(clean_redis):
    ItemFactory(external_id="p1")
    created = api_key_create(name="page", scope=ApiScope.PUBLIC, rate_limit_per_second=5)
    client = _client(created.raw_key)
    before = client.get("/api/v1/recommendations", {"user_id": "u1"})

    clean_redis.script_flush()  # as after a restart or a failover

    after = client.get("/api/v1/recommendations", {"user_id": "u1"})
    assert (before.status_code, after.status_code) == (200, 200)
    assert "user_state_unavailable" not in after.json()["degraded"]
    assert after.json()["degraded"] == before.json()["degraded"]
    assert float(clean_redis.hget(redis_keys.api_key_rate_bucket(created.api_key.pk), "t")) < 4  # both counted


def test_limits_off_let_every_request_through(settings):
    settings.API_RATE_LIMITS_ENABLED = False
    client = _client(api_key_create(name="bench", rate_limit_per_second=1).raw_key)

    assert [client.get("/api/v1/items/nope").status_code for _ in range(3)] == [404, 404, 404]


def test_redis_down_lets_requests_through(monkeypatch):
    client = _client(api_key_create(name="shop", rate_limit_per_second=1).raw_key)
    monkeypatch.setattr(rate_limits, "get_redis", dead_redis)

    assert [client.get("/api/v1/items/nope").status_code for _ in range(2)] == [404, 404]


def test_wrong_keys_are_limited_per_client_address(settings, clean_redis):
    settings.API_AUTH_FAILURES_MAX = 3
    settings.API_AUTH_FAILURES_WINDOW_SECONDS = 60

    answers = [_client(f"pk_wrong_{n}").get("/api/v1/items/p1") for n in range(4)]
    elsewhere = _client("pk_wrong_9", address="10.0.0.2").get("/api/v1/items/p1")

    assert [answer.status_code for answer in answers] == [401, 401, 401, 429]
    assert answers[3]["RateLimit-Policy"] == '"auth-failures";q=3;w=60'
    assert answers[3]["Retry-After"] == "20"  # a wrong key's worth of the window back
    assert elsewhere.status_code == 401
    assert clean_redis.exists(redis_keys.auth_failures_bucket("10.0.0.1"))


def test_a_blocked_address_costs_no_database_query_even_with_new_keys(settings):
    settings.API_AUTH_FAILURES_MAX = 1
    assert _client("pk_wrong_1").get("/api/v1/items/p1").status_code == 401

    with CaptureQueriesContext(connection) as queries:
        answer = _client("pk_never_seen").get("/api/v1/items/p1")

    assert answer.status_code == 429 and len(queries) == 0


def test_an_unknown_key_is_remembered_so_repeating_it_costs_no_query():
    client = _client("pk_unknown_key")
    with CaptureQueriesContext(connection) as first:
        assert client.get("/api/v1/items/p1").status_code == 401

    with CaptureQueriesContext(connection) as second:
        answer = client.get("/api/v1/items/p1")

    assert [query["sql"] for query in first.captured_queries if "personalization_apikey" in query["sql"]] != []
    assert answer.status_code == 401 and len(second) == 0


def test_the_client_address_is_the_outermost_trusted_proxys_view(settings, clean_redis):
    settings.API_AUTH_FAILURES_MAX = 1
    settings.API_TRUSTED_PROXY_COUNT = 1
    forged = {"HTTP_X_FORWARDED_FOR": "1.1.1.1, 203.0.113.7"}  # the client forged the first entry

    _client("pk_wrong_1", address="10.0.0.9", **forged).get("/api/v1/items/p1")

    assert clean_redis.exists(redis_keys.auth_failures_bucket("203.0.113.7"))
    assert not clean_redis.exists(redis_keys.auth_failures_bucket("10.0.0.9"))
