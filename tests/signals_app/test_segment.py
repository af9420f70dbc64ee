from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from graph_app.state.records import EventInput
from personalization import redis_keys
from personalization.models import ApiKey
from personalization.services import api_key_revoke
from signals_app import segment_apis
from signals_app.segment import MappedCall, segment_call_map, segment_report
from signals_app.services import events_ingest

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def track(message_id: str, event: str = "Product Viewed", **overrides):
    properties = overrides.pop("properties", {"product_id": "sku-1"})
    return {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "userId": "u1",
        "properties": properties,
        **overrides,
    }


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.fixture
def segment_client(raw_api_key: str) -> APIClient:
    """Authenticated the way Segment's HTTP API is: the write key as the Basic user name, empty password."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic(raw_api_key))
    return client


@pytest.fixture
def ingested(monkeypatch) -> list[EventInput]:
    """The events the (real) ingest accepted, as it handed them on."""
    accepted: list[EventInput] = []

    def observed(*, raw_events):
        report = events_ingest(raw_events=raw_events)
        accepted.extend(report.accepted_events)
        return report

    monkeypatch.setattr(segment_apis, "events_ingest", observed)
    return accepted


def recent_items(redis, user_key: str) -> list[bytes]:
    return redis.lrange(redis_keys.user_recent_items(user_key), 0, -1)


# The mapping (pure functions).


def test_map_product_viewed_moves_each_known_property_to_its_field_and_keeps_the_rest():
    call = track(
        "m1",
        anonymousId="a1",
        timestamp="2025-03-01T11:00:00Z",
        properties={
            "product_id": "sku-1",
            "list_id": "home",
            "position": 3,
            "request_id": "r-1",
            "price": 9.5,
            "name": "Mug",
        },
        context={"ip": "1.2.3.4"},
        integrations={"All": True},
    )

    mapped = segment_call_map(call, now=NOW)

    assert mapped.problems == []
    assert mapped.links == []
    assert mapped.events == [
        {
            "event_id": "m1",
            "user_id": "u1",
            "session_id": "a1",
            "timestamp": "2025-03-01T11:00:00Z",
            "type": "view",
            "item_id": "sku-1",
            "placement": "home",
            "request_id": "r-1",
            "slot": 2,
            "value": 9.5,
            "context": {
                "segment_event": "Product Viewed",
                "properties": {"name": "Mug"},
                "segment_context": {"ip": "1.2.3.4"},
            },
        }
    ]


@pytest.mark.parametrize(
    ("name", "event_type"),
    [
        ("Product Viewed", "view"),
        ("Product Clicked", "click"),
        ("Product Added", "add_to_cart"),
        ("Product Removed", "remove_from_cart"),
        ("Product Added to Wishlist", "save"),
        ("Wishlist Product Added to Cart", "add_to_cart"),
        ("Product Shared", "share"),
        ("Product List Viewed", "custom"),
        ("Cart Viewed", "custom"),
        ("Newsletter Signed Up", "custom"),
        ("product_viewed", "view"),
        ("product  clicked", "click"),
    ],
)
def test_map_track_names(name, event_type):
    mapped = segment_call_map(track("m1", name), now=NOW)

    assert [(event["type"], event["item_id"], event["context"]["segment_event"]) for event in mapped.events] == [
        (event_type, "sku-1", name)
    ]


def test_map_products_searched_keeps_the_query_in_the_context():
    mapped = segment_call_map(track("m1", "Products Searched", properties={"query": "blue mug"}), now=NOW)

    assert mapped.events == [
        {
            "event_id": "m1",
            "user_id": "u1",
            "type": "search",
            "context": {"segment_event": "Products Searched", "query": "blue mug"},
        }
    ]


def test_map_order_completed_fans_out_one_purchase_per_product():
    call = track(
        "order-9",
        "Order Completed",
        properties={
            "order_id": "o-9",
            "revenue": 30.0,
            "currency": "EUR",
            "products": [
                {"product_id": "sku-1", "price": 10.0, "quantity": 2, "name": "Mug"},
                {"sku": "SKU-2", "price": "5", "position": 2},
                {"product_id": 3},
            ],
        },
    )

    mapped = segment_call_map(call, now=NOW)

    order = {"order_id": "o-9", "revenue": 30.0, "currency": "EUR"}
    assert mapped.problems == []
    assert mapped.events == [
        {
            "event_id": "order-9:0",
            "user_id": "u1",
            "type": "purchase",
            "item_id": "sku-1",
            "value": 20.0,
            "context": {
                "segment_event": "Order Completed",
                "product": {"price": 10.0, "quantity": 2, "name": "Mug"},
                "product_index": 0,
                "properties": order,
            },
        },
        {
            "event_id": "order-9:1",
            "user_id": "u1",
            "type": "purchase",
            "item_id": "SKU-2",
            "slot": 1,
            "value": 5.0,
            "context": {
                "segment_event": "Order Completed",
                "product": {"price": "5"},
                "product_index": 1,
                "properties": order,
            },
        },
        {
            "event_id": "order-9:2",
            "user_id": "u1",
            "type": "purchase",
            "item_id": "3",
            "context": {"segment_event": "Order Completed", "product": {}, "product_index": 2, "properties": order},
        },
    ]


def test_map_order_completed_rejects_the_whole_order_when_a_product_has_no_id():
    call = track("o1", "Order Completed", properties={"products": [{"product_id": "sku-1"}, {"name": "Mug"}, "x"]})

    mapped = segment_call_map(call, now=NOW)

    assert mapped.events == []
    assert mapped.problems == [
        ("properties.products.1.product_id", "Required for 'Order Completed' (product_id or sku)."),
        ("properties.products.2", "Must be a JSON object."),
    ]


def test_map_order_completed_without_products_is_kept_as_a_custom_event():
    mapped = segment_call_map(track("o1", "Order Completed", properties={"order_id": "o-1", "revenue": 12}), now=NOW)

    assert [(event["type"], event.get("item_id"), event["value"]) for event in mapped.events] == [
        ("custom", None, 12.0)
    ]


def test_map_order_completed_with_a_long_message_id_keeps_fan_out_ids_within_100_characters():
    call = track("m" * 100, "Order Completed", properties={"products": [{"product_id": "a"}, {"product_id": "b"}]})

    first, second = segment_call_map(call, now=NOW).events
    again = segment_call_map(call, now=NOW).events[0]

    assert len(first["event_id"]) == 66
    assert first["event_id"].endswith(":0")
    assert second["event_id"] == first["event_id"][:-1] + "1"
    assert again["event_id"] == first["event_id"]


@pytest.mark.parametrize(
    ("position", "slot"),
    [(1, 0), (4, 3), (2.0, 1), ("3", 2), (0, None), (-1, None), (1.5, None), ("home_banner_top", None), (True, None)],
)
def test_map_position_becomes_a_zero_based_slot_or_stays_in_the_context(position, slot):
    (event,) = segment_call_map(track("m1", properties={"product_id": "sku-1", "position": position}), now=NOW).events

    assert event.get("slot") == slot
    assert event["context"].get("properties") == (None if slot is not None else {"position": position})


@pytest.mark.parametrize("key", ["request_id", "recommendation_id", "recommId"])
def test_map_served_slate_id_under_any_of_its_names(key):
    (event,) = segment_call_map(track("m1", properties={"product_id": "sku-1", key: "r-7"}), now=NOW).events

    assert event["request_id"] == "r-7"
    assert "properties" not in event["context"]


@pytest.mark.parametrize(
    ("properties", "value", "kept"),
    [
        ({"value": 3, "revenue": 4, "price": 5}, 3.0, {"revenue": 4, "price": 5}),
        ({"revenue": "4.5", "price": 5}, 4.5, {"price": 5}),
        ({"price": 5, "value": "n/a"}, 5.0, {"value": "n/a"}),
        ({"price": None}, None, {"price": None}),
    ],
)
def test_map_value_from_value_then_revenue_then_price(properties, value, kept):
    (event,) = segment_call_map(track("m1", properties={"product_id": "sku-1", **properties}), now=NOW).events

    assert event.get("value") == value
    assert event["context"]["properties"] == kept


@pytest.mark.parametrize(
    ("call", "problems"),
    [
        ("junk", [("call", "Must be a JSON object.")]),
        (track("", properties={"product_id": "p"}), [("messageId", "This field is required.")]),
        (track("m" * 101), [("messageId", "Must be at most 100 characters.")]),
        (track("m1", userId=None), [("userId", "Either userId or anonymousId is required.")]),
        (track("m1", userId=["u1"]), [("userId", "Must be a string.")]),
        (
            track("m1", properties={"name": "Mug"}),
            [("properties.product_id", "Required for 'Product Viewed' (product_id or sku).")],
        ),
        (track("m1", properties=[1]), [("properties", "Must be a JSON object.")]),
        (track("m1", event=""), [("event", "The event name is required.")]),
        (track("m1", type="teleport"), [("type", "Must be one of alias, group, identify, page, screen, track.")]),
        ({**track("m1"), "type": None}, [("type", "This field is required.")]),
        (
            track("m1", properties={"product_id": "sku-1", "name": "M\u0000g"}),
            [("properties.name", "NUL characters are not allowed.")],
        ),
        (track("m\u00001"), [("messageId", "NUL characters are not allowed.")]),
        (
            track("m1", properties={"product_id": "sku-1", "blob": "x" * 33_000}),
            [("call", "A call must be at most 32 KB.")],
        ),
        ({"type": "alias", "messageId": "m1", "userId": "u1"}, [("previousId", "This field is required.")]),
    ],
)
def test_map_rejects_a_call_naming_the_segment_field(call, problems):
    mapped = segment_call_map(call, now=NOW)

    assert (mapped.events, mapped.links, mapped.problems) == ([], [], problems)


def test_map_identify_links_the_anonymous_session_to_the_user_and_alias_links_the_previous_id():
    identify = {"type": "identify", "messageId": "m1", "userId": "u1", "anonymousId": "a1", "traits": {"x": 1}}
    alias = {"type": "alias", "messageId": "m2", "userId": "u1", "previousId": "old-1"}
    identify_user_only = {"type": "identify", "messageId": "m3", "userId": "u1"}
    group = {"type": "group", "messageId": "m4", "userId": "u1", "groupId": "g1"}

    results = [segment_call_map(call, now=NOW) for call in (identify, alias, identify_user_only, group)]

    assert [(mapped.events, mapped.links, mapped.problems) for mapped in results] == [
        ([], [("u1", "a1")], []),
        ([], [("u1", "old-1")], []),
        ([], [], []),
        ([], [], []),
    ]


def test_map_identify_and_group_traits_are_the_users_to_merge():
    identify = {"type": "identify", "messageId": "m1", "userId": "u1", "traits": {"plan": "gold", "age": 30}}
    rudderstack_identify = {"type": "identify", "messageId": "m2", "userId": "u2", "context": {"traits": {"a": 1}}}
    anonymous_identify = {"type": "identify", "messageId": "m3", "anonymousId": "a1", "traits": {"plan": "gold"}}
    group = {"type": "group", "messageId": "m4", "userId": "u1", "groupId": "acme", "traits": {"plan": "pro"}}

    results = [segment_call_map(call, now=NOW) for call in (identify, rudderstack_identify, anonymous_identify, group)]

    assert [(mapped.traits, mapped.problems) for mapped in results] == [
        ([("u1", {"plan": "gold", "age": 30})], []),
        ([("u2", {"a": 1})], []),
        ([], []),  # no user to keep them for
        ([("u1", {"group.plan": "pro", "group.id": "acme"})], []),
    ]


@pytest.mark.parametrize(
    ("call", "problems"),
    [
        (
            {"type": "identify", "messageId": "m1", "userId": "u1", "traits": [1]},
            [("traits", "Must be a JSON object.")],
        ),
        (
            {"type": "identify", "messageId": "m1", "userId": "u1", "context": {"traits": "gold"}},
            [("context.traits", "Must be a JSON object.")],
        ),
        ({"type": "group", "messageId": "m1", "userId": "u1"}, [("groupId", "This field is required.")]),
        (
            {"type": "group", "messageId": "m1", "userId": "u1", "groupId": "g", "traits": 3},
            [("traits", "Must be a JSON object.")],
        ),
    ],
)
def test_map_rejects_traits_that_are_not_an_object_and_a_group_without_its_id(call, problems):
    mapped = segment_call_map(call, now=NOW)

    assert (mapped.traits, mapped.links, mapped.problems) == ([], [], problems)


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_map_page_and_screen_become_custom_events_named_after_the_call(kind):
    call = {"type": kind, "messageId": "m1", "anonymousId": "a1", "name": "Home", "properties": {"path": "/"}}

    mapped = segment_call_map(call, now=NOW)

    assert mapped.events == [
        {
            "event_id": "m1",
            "session_id": "a1",
            "type": "custom",
            "context": {"segment_event": kind, "name": "Home", "properties": {"path": "/"}},
        }
    ]


def test_map_timestamp_falls_back_to_original_timestamp_corrected_for_clock_skew():
    skewed = track("m1", originalTimestamp="2025-03-01T12:10:00+00:00", sentAt="2025-03-01T12:10:30+00:00")
    without_sent_at = track("m2", originalTimestamp="2025-03-01T11:00:00Z")
    batch_sent_at = track("m3", originalTimestamp="2025-03-01T12:10:00+00:00")

    assert segment_call_map(skewed, now=NOW).events[0]["timestamp"] == "2025-03-01T11:59:30+00:00"
    assert segment_call_map(without_sent_at, now=NOW).events[0]["timestamp"] == "2025-03-01T11:00:00Z"
    assert (
        segment_call_map(batch_sent_at, now=NOW, batch_sent_at="2025-03-01T12:10:30Z").events[0]["timestamp"]
        == "2025-03-01T11:59:30+00:00"
    )


def test_map_a_clock_skew_beyond_the_calendar_keeps_the_original_time_for_validation_to_judge():
    # sentAt in year 9999 and originalTimestamp in year 1: the correction overflowed, a 500 on every Segment route.
    call = track("m1", originalTimestamp="0001-01-01T00:00:00Z", sentAt="9999-12-31T23:59:59Z")

    assert segment_call_map(call, now=NOW).events[0]["timestamp"] == "0001-01-01T00:00:00Z"


def test_map_batch_context_is_shared_and_the_calls_own_keys_win():
    call = track("m1", context={"ip": "9.9.9.9"})

    (event,) = segment_call_map(call, now=NOW, batch_context={"ip": "1.1.1.1", "locale": "de-DE"}).events

    assert event["context"]["segment_context"] == {"ip": "9.9.9.9", "locale": "de-DE"}


def test_map_drops_the_bulkiest_context_first_when_the_event_would_pass_32_kb():
    call = track("m1", properties={"product_id": "sku-1", "name": "Mug"})

    (event,) = segment_call_map(call, now=NOW, batch_context={"page": {"blob": "x" * 33_000}}).events

    assert event["context"] == {
        "segment_event": "Product Viewed",
        "properties": {"name": "Mug"},
        "truncated": ["segment_context"],
    }


def test_report_counts_per_call_and_names_segment_fields_for_ingest_errors():
    viewed = segment_call_map(track("m1"), now=NOW)
    viewed_again = segment_call_map(track("m1"), now=NOW)
    bad_time = segment_call_map(track("m2", timestamp="yesterday"), now=NOW)
    identify = segment_call_map({"type": "identify", "messageId": "m3", "userId": "u1", "anonymousId": "a1"}, now=NOW)
    old = segment_call_map(track("m4"), now=NOW)
    invalid = MappedCall(problems=[("messageId", "This field is required.")])

    report = segment_report(
        calls=[viewed, viewed_again, bad_time, identify, old, invalid],
        ingest_errors=[{"index": 2, "field": "timestamp", "message": "Must be an ISO 8601 date-time or Unix seconds."}],
        accepted_ids=["m1"],
    )

    assert report.as_dict() == {
        "accepted": 2,
        "duplicates": 2,
        "rejected": 2,
        "errors": [
            {"index": 2, "field": "timestamp", "message": "Must be an ISO 8601 date-time or Unix seconds."},
            {"index": 5, "field": "messageId", "message": "This field is required."},
        ],
    }


# The endpoints.


@pytest.mark.django_db
def test_track_stores_the_event_with_placement_slot_and_attribution(segment_client, ingested, clean_redis):
    call = track(
        "m1",
        "Product Clicked",
        properties={"product_id": "sku-1", "list_id": "home", "position": 2, "recommId": "r-1", "name": "Mug"},
        context={"page": {"path": "/"}},
    )

    response = segment_client.post("/api/v1/segment/track", call, format="json")

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    (event,) = ingested
    assert (event.event_id, event.type, event.user_id, event.item_id) == ("m1", "click", "u1", "sku-1")
    assert (event.placement, event.slot, event.request_id, event.value) == ("home", 1, "r-1", None)
    assert event.context == {
        "segment_event": "Product Clicked",
        "properties": {"name": "Mug"},
        "segment_context": {"page": {"path": "/"}},
    }
    assert recent_items(clean_redis, "u1") == [b"sku-1"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "event_type", "marks_interest"),
    [
        ("Product Viewed", "view", True),
        ("Product Clicked", "click", True),
        ("Product Added", "add_to_cart", True),
        ("Product Removed", "remove_from_cart", False),
        ("Product Added to Wishlist", "save", True),
        ("Product Shared", "share", True),
        ("Product List Viewed", "custom", False),
        ("Cart Viewed", "custom", False),
        ("Some Brand New Event", "custom", False),
    ],
)
def test_each_track_name_is_ingested_as_its_event_type(
    segment_client, ingested, clean_redis, name, event_type, marks_interest
):
    response = segment_client.post("/api/v1/segment/batch", {"batch": [track("m1", name)]}, format="json")

    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    assert [(event.type, event.item_id, event.context["segment_event"]) for event in ingested] == [
        (event_type, "sku-1", name)
    ]
    assert recent_items(clean_redis, "u1") == ([b"sku-1"] if marks_interest else [])


@pytest.mark.django_db
def test_products_searched_is_a_search_with_the_query(segment_client, ingested):
    call = track("m1", "Products Searched", properties={"query": "mug"})

    response = segment_client.post("/api/v1/segment/track", call, format="json")

    assert response.json()["accepted"] == 1
    assert [(event.type, event.item_id, event.context) for event in ingested] == [
        ("search", "", {"segment_event": "Products Searched", "query": "mug"})
    ]


@pytest.mark.django_db
def test_order_completed_is_one_purchase_per_product_and_a_resend_is_a_duplicate(segment_client, ingested, clean_redis):
    order = track(
        "order-1",
        "Order Completed",
        properties={
            "order_id": "o-1",
            "products": [{"product_id": "sku-1", "price": 4.0, "quantity": 3}, {"sku": "sku-2", "price": 10}],
        },
    )

    first = segment_client.post("/api/v1/segment/track", order, format="json")
    resent = segment_client.post("/api/v1/segment/batch", {"batch": [order]}, format="json")

    assert first.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    assert resent.json() == {"accepted": 0, "duplicates": 1, "rejected": 0, "errors": []}
    assert [(event.event_id, event.type, event.item_id, event.value) for event in ingested] == [
        ("order-1:0", "purchase", "sku-1", 12.0),
        ("order-1:1", "purchase", "sku-2", 10.0),
    ]
    assert recent_items(clean_redis, "u1") == [b"sku-2", b"sku-1"]


@pytest.mark.django_db
def test_message_id_deduplicates_across_requests_and_within_a_batch(segment_client, ingested):
    segment_client.post("/api/v1/segment/track", track("m1"), format="json")

    response = segment_client.post(
        "/api/v1/segment/batch",
        {"batch": [track("m1"), track("m2", properties={"product_id": "sku-2"}), track("m2")]},
        format="json",
    )

    assert response.json() == {"accepted": 1, "duplicates": 2, "rejected": 0, "errors": []}
    assert [event.event_id for event in ingested] == ["m1", "m2"]


@pytest.mark.django_db
def test_mixed_batch_accepts_the_valid_calls_and_reports_the_others_by_index(segment_client, ingested, clean_redis):
    future = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    batch = [
        track("ok-1"),
        track("", properties={"product_id": "sku-1"}),
        track("no-item", properties={"name": "Mug"}),
        track("late", timestamp=future),
        {"type": "page", "messageId": "page-1", "userId": "u1", "name": "Home"},
        track("nul", properties={"product_id": "sku-1", "name": "a\u0000b"}),
        track("big", properties={"product_id": "sku-1", "blob": "x" * 33_000}),
        {"type": "group", "messageId": "g-1", "userId": "u1", "groupId": "acme"},
        "junk",
        {"messageId": "no-type", "userId": "u1"},
        track("ok-2", properties={"product_id": "sku-2"}),
    ]

    response = segment_client.post("/api/v1/segment/batch", {"batch": batch}, format="json")

    assert response.status_code == 200
    assert response.json() == {
        "accepted": 4,
        "duplicates": 0,
        "rejected": 7,
        "errors": [
            {"index": 1, "field": "messageId", "message": "This field is required."},
            {
                "index": 2,
                "field": "properties.product_id",
                "message": "Required for 'Product Viewed' (product_id or sku).",
            },
            {"index": 3, "field": "timestamp", "message": "Must not be more than 5 minutes in the future."},
            {"index": 5, "field": "properties.name", "message": "NUL characters are not allowed."},
            {"index": 6, "field": "call", "message": "A call must be at most 32 KB."},
            {"index": 8, "field": "call", "message": "Must be a JSON object."},
            {"index": 9, "field": "type", "message": "This field is required."},
        ],
    }
    assert [(event.event_id, event.type) for event in ingested] == [
        ("ok-1", "view"),
        ("page-1", "custom"),
        ("ok-2", "view"),
    ]
    assert ingested[1].context == {"segment_event": "page", "name": "Home"}
    assert recent_items(clean_redis, "u1") == [b"sku-2", b"sku-1"]


@pytest.mark.django_db
def test_identify_merges_the_anonymous_history_into_the_user(segment_client, clean_redis):
    segment_client.post("/api/v1/segment/track", track("m1", userId=None, anonymousId="a1"), format="json")
    assert recent_items(clean_redis, "session:a1") == [b"sku-1"]

    response = segment_client.post(
        "/api/v1/segment/batch",
        {
            "batch": [
                {"type": "identify", "messageId": "m2", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "x"}},
                track("m3", userId=None, anonymousId="a1", properties={"product_id": "sku-2"}),
            ]
        },
        format="json",
    )

    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": 0, "errors": []}
    assert recent_items(clean_redis, "u1") == [b"sku-2", b"sku-1"]
    assert recent_items(clean_redis, "session:a1") == []
    # Later anonymous calls of that session count for the user.
    segment_client.post(
        "/api/v1/segment/track",
        track("m4", userId=None, anonymousId="a1", properties={"product_id": "sku-3"}),
        format="json",
    )
    assert recent_items(clean_redis, "u1") == [b"sku-3", b"sku-2", b"sku-1"]


@pytest.mark.django_db
def test_alias_links_the_previous_id_to_the_user(segment_client, clean_redis):
    segment_client.post("/api/v1/segment/track", track("m1", userId=None, anonymousId="guest-7"), format="json")

    response = segment_client.post(
        "/api/v1/segment/batch",
        {"batch": [{"type": "alias", "messageId": "m2", "previousId": "guest-7", "userId": "u1"}]},
        format="json",
    )

    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    assert recent_items(clean_redis, "u1") == [b"sku-1"]


@pytest.mark.django_db
def test_batch_context_reaches_every_call(segment_client, ingested):
    body = {
        "batch": [track("m1"), track("m2", context={"locale": "fr-FR"})],
        "context": {"locale": "de-DE", "library": {"name": "analytics-node"}},
        "integrations": {"All": False},
    }

    segment_client.post("/api/v1/segment/batch", body, format="json")

    assert [event.context["segment_context"] for event in ingested] == [
        {"locale": "de-DE", "library": {"name": "analytics-node"}},
        {"locale": "fr-FR", "library": {"name": "analytics-node"}},
    ]


@pytest.mark.django_db
def test_bearer_api_key_works_too(api_client, ingested):
    response = api_client.post("/api/v1/segment/track", track("m1"), format="json")

    assert response.json()["accepted"] == 1
    assert len(ingested) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        basic("pk_wrong_key"),
        basic(""),
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"\xff\xfe:").decode(),
        "Token abc",
    ],
)
def test_missing_or_wrong_write_key_is_401_and_stores_nothing(raw_api_key, ingested, clean_redis, authorization):
    client = APIClient()
    if authorization is not None:
        client.credentials(HTTP_AUTHORIZATION=authorization)

    track_response = client.post("/api/v1/segment/track", track("m1"), format="json")
    batch_response = client.post("/api/v1/segment/batch", {"batch": [track("m2")]}, format="json")

    assert (track_response.status_code, batch_response.status_code) == (401, 401)
    assert track_response.json()["code"] in {"not_authenticated", "authentication_failed"}
    assert ingested == []
    assert recent_items(clean_redis, "u1") == []


@pytest.mark.django_db
def test_revoked_write_key_is_401(segment_client, raw_api_key):
    api_key_revoke(api_key=ApiKey.objects.get())

    assert segment_client.post("/api/v1/segment/track", track("m1"), format="json").status_code == 401


@pytest.mark.django_db
def test_single_track_over_32_kb_is_413(segment_client, ingested):
    call = track("m1", properties={"product_id": "sku-1", "blob": "x" * (32 * 1024)})

    response = segment_client.post("/api/v1/segment/track", call, format="json")

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert ingested == []


@pytest.mark.django_db
def test_batch_over_500_kb_is_413(segment_client, ingested):
    calls = [track(f"m{n}", properties={"product_id": "sku-1", "blob": "x" * 30_000}) for n in range(18)]

    response = segment_client.post("/api/v1/segment/batch", {"batch": calls}, format="json")

    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert ingested == []


@pytest.mark.django_db
def test_batch_just_under_500_kb_is_taken(segment_client, ingested):
    calls = [track(f"m{n}", properties={"product_id": "sku-1", "blob": "x" * 30_000}) for n in range(16)]

    response = segment_client.post("/api/v1/segment/batch", {"batch": calls}, format="json")

    assert response.json() == {"accepted": 16, "duplicates": 0, "rejected": 0, "errors": []}


@pytest.mark.django_db
def test_nul_in_a_track_call_rejects_it(segment_client, ingested):
    response = segment_client.post("/api/v1/segment/track", track("m1", userId="u\u00001"), format="json")

    assert response.json() == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "errors": [{"index": 0, "field": "userId", "message": "NUL characters are not allowed."}],
    }
    assert ingested == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [["a", "list"], {"batch": "nope"}, {"batch": []}, {"calls": [track("m1")]}, {"batch": [track("m1")], "context": 1}],
)
def test_malformed_batch_bodies_are_400(segment_client, ingested, body):
    response = segment_client.post("/api/v1/segment/batch", body, format="json")

    assert response.status_code == 400
    assert response.json()["errors"]
    assert ingested == []


@pytest.mark.django_db
def test_invalid_json_and_non_object_track_bodies_are_400(segment_client):
    invalid = segment_client.post("/api/v1/segment/track", "{not json", content_type="application/json")
    a_list = segment_client.post("/api/v1/segment/track", [track("m1")], format="json")

    assert (invalid.status_code, invalid.json()["code"]) == (400, "parse_error")
    assert (a_list.status_code, a_list.json()["errors"]) == (400, {"body": ["Must be a JSON object."]})


@pytest.mark.django_db
def test_openapi_schema_documents_both_endpoints_and_the_write_key(api_client):
    schema = api_client.get("/api/v1/schema/", {"format": "json"}).json()

    for path, operation_id in (("/api/v1/segment/track", "segment_track"), ("/api/v1/segment/batch", "segment_batch")):
        operation = schema["paths"][path]["post"]
        assert operation["operationId"] == operation_id
        assert set(operation["responses"]) == {"200", "400", "401", "403", "411", "413", "415", "429", "503"}
        assert {"SegmentWriteKey": []} in operation["security"]
        assert {"ApiKey": []} in operation["security"]
    assert schema["components"]["securitySchemes"]["SegmentWriteKey"]["scheme"] == "basic"
