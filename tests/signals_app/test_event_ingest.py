from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from graph_app.models import Shopper
from personalization import redis_keys
from signals_app.models import Event

pytestmark = pytest.mark.django_db


def view(event_id: str, **overrides):
    return {"event_id": event_id, "type": "view", "user_id": "u1", "item_id": "sku-1", **overrides}


def test_single_event_is_stored_and_updates_online_state(api_client, clean_redis):
    response = api_client.post("/api/v1/events", view("e1", placement="home", value=1.5), format="json")

    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []}
    event = Event.objects.get(event_id="e1")
    assert (event.type, event.user_id, event.item_id, event.placement, event.value) == (
        "view",
        "u1",
        "sku-1",
        "home",
        1.5,
    )
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"sku-1"]
    assert clean_redis.zscore(redis_keys.ITEM_POPULARITY, "sku-1") == 1.0
    assert Shopper.objects.filter(external_id="u1").exists()


def test_same_event_id_counts_once_across_requests_and_within_a_batch(api_client, clean_redis):
    api_client.post("/api/v1/events", view("e1"), format="json")

    again = api_client.post("/api/v1/events", {"events": [view("e1"), view("e2"), view("e2")]}, format="json")

    assert again.json() == {"accepted": 1, "duplicates": 2, "rejected": 0, "errors": []}
    assert Event.objects.count() == 2
    # The resend did not count twice in popularity.
    assert clean_redis.zscore(redis_keys.ITEM_POPULARITY, "sku-1") == 2.0


def test_batch_accepts_valid_events_and_reports_each_rejected_one(api_client):
    future = (timezone.now() + timedelta(minutes=10)).isoformat()
    late = (timezone.now() - timedelta(days=3)).isoformat()
    response = api_client.post(
        "/api/v1/events",
        {
            "events": [
                view("ok-1"),
                view("bad-type", type="teleport"),
                view("no-user", user_id=""),
                view("no-item", item_id=""),
                view("future", timestamp=future),
                view("late", timestamp=late),
                {"type": "search", "session_id": "s1", "event_id": "search-1", "context": {"query": "mug"}},
                "junk",
                view("nul\u0000id"),
            ]
        },
        format="json",
    )

    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 6)
    assert {(error["index"], error["field"]) for error in body["errors"]} == {
        (1, "type"),
        (2, "user_id"),
        (3, "item_id"),
        (4, "timestamp"),
        (7, "event"),
        (8, "event_id"),
    }
    assert set(Event.objects.values_list("event_id", flat=True)) == {"ok-1", "late", "search-1"}
    assert Event.objects.get(event_id="late").occurred_at < timezone.now() - timedelta(days=2)


def test_session_events_build_session_state(api_client, clean_redis):
    api_client.post("/api/v1/events", view("e1", user_id="", session_id="s-9"), format="json")

    assert clean_redis.lrange(redis_keys.user_recent_items("session:s-9"), 0, -1) == [b"sku-1"]


def test_recent_items_move_to_front_without_repeats(api_client, clean_redis):
    api_client.post(
        "/api/v1/events",
        {
            "events": [
                view("e1", item_id="a"),
                view("e2", item_id="b"),
                view("e3", item_id="a"),
                view("e4", type="skip", item_id="c"),
            ]
        },
        format="json",
    )

    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"a", b"b"]


@pytest.mark.parametrize(
    "body",
    [["a", "list"], {"events": "nope"}, {"events": []}, {"events": [view(f"e{n}") for n in range(501)]}],
)
def test_malformed_bodies_are_400_and_store_nothing(api_client, body):
    response = api_client.post("/api/v1/events", body, format="json")

    assert response.status_code == 400
    assert response.json()["errors"]
    assert not Event.objects.exists()


def test_invalid_json_is_400(api_client):
    response = api_client.post("/api/v1/events", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


def test_events_require_a_key(anonymous_client):
    assert anonymous_client.post("/api/v1/events", view("e1"), format="json").status_code == 401
    assert not Event.objects.exists()


def test_redis_outage_answers_503_with_retry_after(api_client, monkeypatch):
    from signals_app import services
    from tests.conftest import dead_redis

    monkeypatch.setattr(services, "get_redis", dead_redis)

    response = api_client.post("/api/v1/events", view("e1"), format="json")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json()["code"] == "service_unavailable"
