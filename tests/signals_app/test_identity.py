from __future__ import annotations

import time

import numpy as np
import pytest

from graph_app.features.online import features_fetch
from graph_app.features.user_affinity import affinity_decode
from graph_app.state.models import Event
from personalization import redis_keys
from signals_app.consumer import events_drain_all
from signals_app.models import IdentityLink

pytestmark = pytest.mark.django_db


def anonymous_view(event_id: str, item_id: str, session_id: str = "s-1"):
    return {"event_id": event_id, "type": "view", "session_id": session_id, "item_id": item_id}


def test_identify_joins_the_sessions_history_to_the_user(api_client, clean_redis):
    api_client.post("/api/v1/events", {"events": [anonymous_view("a1", "x"), anonymous_view("a2", "y")]}, format="json")
    api_client.post(
        "/api/v1/events", {"event_id": "u1", "type": "view", "user_id": "alice", "item_id": "z"}, format="json"
    )

    response = api_client.post("/api/v1/users/alice/identify", {"session_id": "s-1"}, format="json")

    assert response.status_code == 200
    assert response.json() == {"user_id": "alice", "session_id": "s-1", "merged_items": 2}
    assert clean_redis.lrange(redis_keys.user_recent_items("alice"), 0, -1) == [b"y", b"x", b"z"]
    assert clean_redis.lrange(redis_keys.user_recent_items("session:s-1"), 0, -1) == []

    # Later events under the session alone count for the user.
    api_client.post("/api/v1/events", anonymous_view("a3", "w"), format="json")
    assert clean_redis.lrange(redis_keys.user_recent_items("alice"), 0, 0) == [b"w"]

    events_drain_all()
    assert IdentityLink.objects.get(session_id="s-1").user_id == "alice"
    assert Event.objects.get(event_id="a3").user_id == "alice"
    assert Event.objects.get(event_id="a1").user_id == ""  # history keeps what was sent; the link joins it


def test_an_event_with_both_ids_links_the_session(api_client, clean_redis):
    api_client.post("/api/v1/events", anonymous_view("a1", "x", session_id="s-2"), format="json")

    api_client.post(
        "/api/v1/events",
        {"event_id": "b1", "type": "click", "user_id": "bob", "session_id": "s-2", "item_id": "q"},
        format="json",
    )

    assert clean_redis.get(redis_keys.session_alias("s-2")) == b"bob"
    assert clean_redis.lrange(redis_keys.user_recent_items("bob"), 0, -1) == [b"q", b"x"]
    events_drain_all()
    assert IdentityLink.objects.get(session_id="s-2").user_id == "bob"


@pytest.fixture
def shop(api_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # publishes the catalog facts to Redis
        for item_id, category in [("mug", "kitchen"), ("bowl", "kitchen"), ("rake", "garden")]:
            api_client.put(
                f"/api/v1/items/{item_id}",
                {"title": item_id, "category": category, "entities": [{"kind": "brand", "id": "acme"}]},
                format="json",
            )


USER_FEATURES = ("user_category_frequency", "user_category_recency_days", "user_item_entity_affinity")


def test_identify_carries_the_sessions_update_times_so_the_users_features_are_served(api_client, clean_redis, shop):
    api_client.post(
        "/api/v1/events", {"events": [anonymous_view("a1", "mug"), anonymous_view("a2", "rake")]}, format="json"
    )
    session = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("session:s-1")))

    api_client.post("/api/v1/users/carol/identify", {"session_id": "s-1"}, format="json")

    carol = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("carol")))
    assert carol.last == session.last is not None
    assert carol.recent_last == session.recent_last is not None
    assert not clean_redis.exists(redis_keys.user_affinity("session:s-1"))
    features = features_fetch(user_key="carol", item_ids=["mug", "bowl", "rake"], placement="home", now=time.time())
    for name in (*USER_FEATURES, "user_item_similarity"):
        assert not np.isnan(features.column(name)).any(), name
    assert features.column("user_category_frequency")[0] > 0


@pytest.mark.parametrize("later", ["user", "session"])
def test_identify_keeps_the_later_update_time_of_the_user_and_the_session(api_client, clean_redis, shop, later):
    now = time.time()
    session_time, user_time = (now - 600, now) if later == "user" else (now, now - 600)
    api_client.post("/api/v1/events", {**anonymous_view("a1", "mug"), "timestamp": session_time}, format="json")
    api_client.post(
        "/api/v1/events",
        {"event_id": "u1", "type": "view", "user_id": "dave", "item_id": "rake", "timestamp": user_time},
        format="json",
    )

    api_client.post("/api/v1/users/dave/identify", {"session_id": "s-1"}, format="json")

    dave = affinity_decode(clean_redis.hgetall(redis_keys.user_affinity("dave")))
    assert (dave.last, dave.recent_last) == pytest.approx((now, now), abs=0.01)


@pytest.mark.parametrize(("body", "field"), [({}, "session_id"), ({"session_id": ""}, "session_id")])
def test_identify_needs_a_session(api_client, body, field):
    response = api_client.post("/api/v1/users/alice/identify", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_identify_needs_a_key(anonymous_client):
    assert anonymous_client.post("/api/v1/users/a/identify", {"session_id": "s"}, format="json").status_code == 401
