"""Segment's and RudderStack's official Python libraries against a live server, configured as a storefront team
would: default settings, the host set to <base>/api/v1/segment and a platform API key as the write key. Each
client is flushed (its queue joined) before the test looks; nothing waits on time."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import requests
from rudderstack.analytics.client import Client as RudderStackClient
from segment.analytics.client import Client as SegmentClient

from graph_app.models import Shopper
from graph_app.online import catalog_online_rebuild
from graph_app.state.models import Event
from personalization import redis_keys
from personalization.process_caches import process_caches_reset
from signals_app.consumer import events_drain_all
from surface_app.models import BusinessRule, Placement
from tests.factories import ItemFactory, unit

pytestmark = pytest.mark.django_db(transaction=True)

SDKS = {"segment": SegmentClient, "rudderstack": RudderStackClient}


@dataclass
class Source:
    """One library's client and the delivery errors it reported."""

    client: Any
    errors: list[Exception] = field(default_factory=list)

    def flush(self) -> None:
        self.client.flush()  # returns once every queued call was delivered (or failed)
        assert self.errors == []


def source_start(name: str, *, write_key: str, base_url: str, **options: Any) -> Source:
    source = Source(client=None)
    source.client = SDKS[name](
        write_key=write_key,
        host=f"{base_url}/api/v1/segment",
        on_error=lambda error, batch: source.errors.append(error),
        **options,
    )
    return source


@pytest.fixture(params=sorted(SDKS))
def source(request, live_server, raw_api_key) -> Iterator[Source]:
    started = source_start(request.param, write_key=raw_api_key, base_url=live_server.url)
    yield started
    started.client.join()


@pytest.fixture
def shop(clean_redis) -> None:
    """Mugs near the anchor, in decreasing similarity, and tea further away; a three-item home shelf."""
    ItemFactory(external_id="anchor", category="mugs", embedding=unit(1, 0))
    for index in range(1, 5):
        ItemFactory(external_id=f"mug-{index}", category="mugs", embedding=unit(1, index * 0.1))
    ItemFactory(external_id="tea", category="drinks", embedding=unit(1, 0.75))
    catalog_online_rebuild()
    Placement.objects.create(name="home", size=3)


def shelf(live_server, raw_api_key: str, user_id: str) -> list[str]:
    process_caches_reset(["surface.rules_snapshot"])  # serving compiles the rules this test wrote
    response = requests.get(
        f"{live_server.url}/api/v1/recommendations",
        params={"user_id": user_id, "placement": "home"},
        headers={"Authorization": f"Bearer {raw_api_key}"},
        timeout=10,
    )
    assert response.status_code == 200
    return [item["item_id"] for item in response.json()["items"]]


def test_a_call_sent_twice_is_stored_once(source):
    for _ in range(2):
        source.client.track(
            user_id="u1", event="Product Viewed", properties={"product_id": "mug-1"}, message_id="m-once"
        )
        source.flush()

    events_drain_all()

    stored = list(Event.objects.filter(event_id="m-once").values_list("type", "user_id", "item_id"))
    assert stored == [("view", "u1", "mug-1")]


def test_every_call_type_reaches_the_platform(source, clean_redis):
    source.client.page(user_id="u1", name="Home", message_id="m-page")
    source.client.screen(user_id="u1", name="Cart", message_id="m-screen")
    source.client.track(anonymous_id="a1", event="Product Added", properties={"sku": "mug-2"}, message_id="m-add")
    source.client.alias(previous_id="a1", user_id="u1")
    source.client.group(user_id="u1", group_id="acme", traits={"plan": "enterprise"})
    source.flush()

    events_drain_all()

    assert sorted(Event.objects.values_list("event_id", "type")) == [
        ("m-add", "add_to_cart"),
        ("m-page", "custom"),
        ("m-screen", "custom"),
    ]
    assert Shopper.objects.get(external_id="u1").traits == {"group.id": "acme", "group.plan": "enterprise"}
    assert b"mug-2" in clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1)  # the alias joined a1


def test_identify_traits_reach_a_rule_audience(source, shop, live_server, raw_api_key):
    BusinessRule.objects.create(
        name="Anchor for gold members", kind="pin", item_ids=["anchor"], slot=1,
        audience={"field": "traits.plan", "op": "eq", "value": "gold"},
    )  # fmt: skip
    assert "anchor" not in shelf(live_server, raw_api_key, "u1")  # the oldest item: not on a new user's shelf

    source.client.identify(user_id="u1", traits={"plan": "gold", "email": "u1@example.com"})
    source.flush()

    assert shelf(live_server, raw_api_key, "u1")[0] == "anchor"
    assert "anchor" not in shelf(live_server, raw_api_key, "u2")  # no traits: the rule is not for them
    assert Shopper.objects.get(external_id="u1").traits == {"plan": "gold", "email": "u1@example.com"}


def test_the_users_shelf_follows_the_tracked_events(source, shop, live_server, raw_api_key):
    before = shelf(live_server, raw_api_key, "u1")

    source.client.track(user_id="u1", event="Product Viewed", properties={"product_id": "anchor"})
    source.flush()

    after = shelf(live_server, raw_api_key, "u1")
    assert after != before
    assert after == ["mug-1", "mug-2", "mug-3"]  # nearest the anchor first; the viewed item itself is left out


@pytest.mark.parametrize("sdk", sorted(SDKS))
def test_a_wrong_write_key_is_reported_by_the_library_with_the_apis_message(sdk, live_server):
    answered = requests.post(f"{live_server.url}/api/v1/segment/v1/batch", json={"batch": []}, auth=("not-a-key", ""))
    assert answered.status_code == 401
    assert answered.json()["message"] == answered.json()["detail"] != ""

    source = source_start(sdk, write_key="not-a-key", base_url=live_server.url)
    source.client.track(user_id="u1", event="Product Viewed", properties={"product_id": "mug-1"})
    source.client.flush()
    source.client.join()

    assert [(error.status, error.code, error.message) for error in source.errors] == [
        (401, "authentication_failed", answered.json()["message"])
    ]
    assert Event.objects.count() == 0


def test_segments_library_with_gzip_on(live_server, raw_api_key, clean_redis):
    source = source_start("segment", write_key=raw_api_key, base_url=live_server.url, gzip=True)
    source.client.track(user_id="u1", event="Product Viewed", properties={"product_id": "mug-1"})
    source.flush()
    source.client.join()

    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"mug-1"]


# The routes as Segment's HTTP Tracking API and browser libraries use them.


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.mark.parametrize(
    ("path", "call", "expected_type"),
    [
        ("/v1/track", {"event": "Product Viewed", "properties": {"product_id": "mug-1"}}, "view"),
        ("/v1/page", {"name": "Home"}, "custom"),
        ("/v1/screen", {"name": "Home"}, "custom"),
        ("/v1/t", {"event": "Product Clicked", "properties": {"product_id": "mug-1"}}, "click"),
        ("/v1/p", {"name": "Home"}, "custom"),
    ],
)
def test_each_single_call_route_takes_its_type_from_the_path(api_client, path, call, expected_type, clean_redis):
    body = {"messageId": "m-1", "userId": "u1", **call}

    response = api_client.post(f"/api/v1/segment{path}", body, format="json")

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    events_drain_all()
    assert list(Event.objects.values_list("event_id", "type")) == [("m-1", expected_type)]


def test_identify_route_merges_traits_and_group_route_needs_a_group_id(api_client):
    first = api_client.post(
        "/api/v1/segment/v1/identify", {"userId": "u1", "messageId": "m-1", "traits": {"a": 1}}, format="json"
    )
    second = api_client.post(
        "/api/v1/segment/v1/i", {"userId": "u1", "messageId": "m-2", "traits": {"b": 2}}, format="json"
    )
    group = api_client.post("/api/v1/segment/v1/group", {"userId": "u1", "messageId": "m-3"}, format="json")

    assert (first.status_code, second.status_code, group.status_code) == (200, 200, 200)
    assert Shopper.objects.get(external_id="u1").traits == {"a": 1, "b": 2}
    assert group.json()["errors"] == [{"index": 0, "field": "groupId", "message": "This field is required."}]


def test_analytics_js_style_call_authenticates_with_the_write_key_in_the_body(client, raw_api_key, clean_redis):
    """analytics.js posts text/plain without an Authorization header, the write key in the body."""
    call = {"writeKey": raw_api_key, "type": "track", "event": "Product Viewed", "messageId": "m-1",
            "anonymousId": "a1", "properties": {"product_id": "mug-1"}}  # fmt: skip

    response = client.post("/api/v1/segment/v1/t", orjson.dumps(call), content_type="text/plain")

    assert response.status_code == 200
    assert response.json()["accepted"] == 1
    assert response["Access-Control-Allow-Origin"] == "*"
    events_drain_all()
    stored = Event.objects.get(event_id="m-1")
    assert "writeKey" not in orjson.dumps(stored.context).decode()  # the key is not logged with the event


def test_analytics_js_batch_with_an_unknown_body_key_is_401(client, clean_redis):
    body = {"writeKey": "nope", "batch": [{"type": "page", "messageId": "m-1", "anonymousId": "a1"}]}

    response = client.post("/api/v1/segment/v1/b", orjson.dumps(body), content_type="text/plain")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert response.json()["message"] == response.json()["detail"]
    assert Event.objects.count() == 0


def test_a_browsers_preflight_is_answered_without_a_key(client):
    response = client.options(
        "/api/v1/segment/v1/batch",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, anonymousid",
        },
    )

    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert response["Access-Control-Allow-Headers"] == "authorization, content-type, anonymousid"


def test_an_error_body_carries_message_beside_detail(client, raw_api_key):
    response = client.post(
        "/api/v1/segment/v1/batch",
        b'{"batch": ',
        content_type="application/json",
        headers={"Authorization": basic(raw_api_key)},
    )

    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "parse_error"
    assert body["message"] == body["detail"]
    assert body["detail"].startswith("The body is not valid JSON")


def test_a_gzip_batch_over_the_limit_once_inflated_is_413(client, raw_api_key):
    calls = [{"type": "page", "messageId": f"m-{n}", "userId": "u1", "name": "x" * 30_000} for n in range(20)]
    compressed = gzip.compress(orjson.dumps({"batch": calls}))

    response = client.post(
        "/api/v1/segment/v1/batch",
        compressed,
        content_type="application/json",
        headers={"Authorization": basic(raw_api_key), "Content-Encoding": "gzip"},
    )

    assert response.status_code == 413
    assert response.json()["message"] == "The body must be at most 500 KB."


def test_a_public_keys_identify_links_the_session_but_writes_no_traits(client, clean_redis):
    """A browser-shipped key must not set the traits compliance rules read (an age, say)."""
    from personalization.models import ApiScope
    from personalization.services import api_key_create

    public_key = api_key_create(name="storefront page", scope=ApiScope.PUBLIC).raw_key
    view = {"writeKey": public_key, "event": "Product Viewed", "messageId": "m-1", "anonymousId": "a1",
            "properties": {"product_id": "mug-1"}}  # fmt: skip
    identify = {"writeKey": public_key, "messageId": "m-2", "userId": "u1", "anonymousId": "a1",
                "traits": {"age": 30}}  # fmt: skip

    responses = [
        client.post(f"/api/v1/segment/v1/{path}", orjson.dumps(call), content_type="text/plain")
        for path, call in (("t", view), ("i", identify))
    ]

    assert [response.json()["accepted"] for response in responses] == [1, 1]
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"mug-1"]  # the session joined u1
    assert not Shopper.objects.filter(external_id="u1", traits__has_key="age").exists()
    assert clean_redis.get(redis_keys.user_traits("u1")) is None
