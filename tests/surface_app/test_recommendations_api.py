from __future__ import annotations

import json

import pytest

from graph_app.state.models import Event
from personalization import redis_keys
from scoring_app.engine import retrieval
from signals_app.consumer import events_drain_all
from tests.conftest import dead_redis
from tests.factories import ItemFactory, unit
from tests.signals_app.helpers import ingest_views

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(vacuumed_vector_index):
    ItemFactory(external_id="anchor", embedding=unit(1, 0))
    ItemFactory(external_id="near", embedding=unit(1, 0.1))
    ItemFactory(external_id="nearest-but-sold-out", embedding=unit(1, 0.01), in_stock=False)
    ItemFactory(external_id="far", embedding=unit(0, 1))
    ItemFactory(external_id="middle", embedding=unit(1, 1))


def test_user_with_history_gets_similar_in_stock_unseen_items(api_client, clean_redis, catalog):
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")

    response = api_client.get("/api/v1/recommendations", {"user_id": "u1", "placement": "home", "k": 3})

    assert response.status_code == 200
    body = response.json()
    # What degraded first: a failure then names the source that did (see the closing note of stop 9).
    assert body["degraded"] == ["ranker_unavailable"]
    assert [(item["item_id"], item["source"]) for item in body["items"]] == [
        ("near", "similar"), ("middle", "similar"), ("far", "similar"),
    ]  # fmt: skip
    assert body["items"][0]["score"] == pytest.approx(1 - 0.00496, abs=1e-3)
    assert body["placement"] == "home"
    assert body["confidence"] == 1.0
    # No ranker has been trained: retrieval's own order serves, and the response says so.
    assert body["path"] == "fallback"


def test_new_user_gets_popular_items_in_stock(api_client, clean_redis):
    ItemFactory(external_id="p1")
    ItemFactory(external_id="p2")
    ItemFactory(external_id="p3-sold-out", in_stock=False)
    ingest_views({"p1": 5, "p2": 10, "p3-sold-out": 20, "not-in-catalog": 40})

    body = api_client.get("/api/v1/recommendations", {"user_id": "stranger", "k": 5}).json()

    assert [(item["item_id"], item["source"]) for item in body["items"]] == [("p2", "popular"), ("p1", "popular")]
    # Scores are popularity relative to the most popular item (which is not in the catalog).
    assert [item["score"] for item in body["items"]] == pytest.approx([0.25, 0.125], rel=1e-3)
    assert body["confidence"] == 0.0


def test_similar_items_are_filled_with_popular_ones(api_client, clean_redis):
    ItemFactory(external_id="seen", embedding=unit(1, 0))
    ItemFactory(external_id="close", embedding=unit(1, 0.2))
    ItemFactory(external_id="no-vector")
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "seen")
    ingest_views({"no-vector": 3, "seen": 9})

    body = api_client.get("/api/v1/recommendations", {"user_id": "u1", "k": 5}).json()

    assert [(item["item_id"], item["source"]) for item in body["items"]] == [
        ("close", "similar"),
        ("no-vector", "popular"),
    ]
    assert body["confidence"] == 0.2


def test_served_slate_is_logged_for_attribution(api_client, clean_redis, catalog):
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")
    clean_redis.set(redis_keys.active_model("embeddings"), "embeddings-v7")

    body = api_client.get("/api/v1/recommendations", {"user_id": "u1", "placement": "pdp", "k": 2}).json()

    assert body["model_version"] == "embeddings-v7"
    logged = json.loads(clean_redis.get(redis_keys.slate(body["request_id"])))
    assert logged["placement"] == "pdp"
    assert logged["user_key"] == "u1"
    assert [(row["item_id"], row["slot"]) for row in logged["items"]] == [("near", 0), ("middle", 1)]
    # Redis keeps the slate an hour (the impression log covers the rest of the attribution window); the user's
    # last slate, the fallback of last resort, a week.
    assert 3500 < clean_redis.ttl(redis_keys.slate(body["request_id"])) <= 3600
    assert 3600 < clean_redis.ttl(redis_keys.user_last_slate("u1", "pdp")) <= 7 * 24 * 3600


def test_a_click_on_a_slate_redis_no_longer_keeps_is_attributed_from_the_impression_log(
    api_client, clean_redis, catalog
):
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")
    clean_redis.set(redis_keys.active_model("embeddings"), "embeddings-v7")
    body = api_client.get("/api/v1/recommendations", {"user_id": "u1", "placement": "pdp", "k": 2}).json()
    events_drain_all()  # the impressions reach the log
    clean_redis.delete(redis_keys.slate(body["request_id"]))  # as SURFACE_SLATE_KEEP_SECONDS would
    click = {"event_id": "c-1", "type": "click", "user_id": "u1", "item_id": "middle", "request_id": body["request_id"]}

    assert api_client.post("/api/v1/events", click, format="json").status_code == 202
    events_drain_all()

    event = Event.objects.get(event_id="c-1")
    served = body["items"][1]
    assert (event.attributed_placement, event.attributed_slot, event.attributed_source) == ("pdp", 1, "similar")
    assert event.attributed_score == pytest.approx(served["score"])
    assert event.attributed_model_version == "embeddings-v7"


def test_recommendations_query_each_database_source_once_then_none_while_the_user_is_unchanged(
    api_client, clean_redis, catalog, django_assert_num_queries
):
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")
    api_client.get("/api/v1/recommendations", {"user_id": "other"})  # warms the API key and shared list caches

    # One query each: neighbours of the recent items and of the user's vector (none yet).
    with django_assert_num_queries(2):
        first = api_client.get("/api/v1/recommendations", {"user_id": "u1", "k": 2}).json()
    with django_assert_num_queries(0):  # the user-keyed cache of their candidate set
        again = api_client.get("/api/v1/recommendations", {"user_id": "u1", "k": 2}).json()
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "far")  # a new event changes the cache's key
    # The recent items' neighbours again; those of the user's vector are kept until the embeddings change.
    with django_assert_num_queries(1):
        changed = api_client.get("/api/v1/recommendations", {"user_id": "u1", "k": 2}).json()

    assert [item["item_id"] for item in first["items"]] == [item["item_id"] for item in again["items"]]
    assert [item["item_id"] for item in changed["items"]] != [item["item_id"] for item in first["items"]]
    assert 60 <= clean_redis.ttl(redis_keys.user_cache("u1", "similar_to_recent")) <= 120
    assert 240 <= clean_redis.ttl(redis_keys.user_cache("u1", "user_vector")) <= 300


def test_redis_outage_degrades_to_catalog_popularity(api_client, monkeypatch):
    ItemFactory(external_id="popular", popularity=10)
    ItemFactory(external_id="less", popularity=1)
    ItemFactory(external_id="sold-out", popularity=99, in_stock=False)
    monkeypatch.setattr(retrieval, "get_redis", dead_redis)
    from surface_app.serving import slates

    monkeypatch.setattr(slates, "get_redis", dead_redis)

    response = api_client.get("/api/v1/recommendations", {"user_id": "u1", "k": 5})

    assert response.status_code == 200
    body = response.json()
    assert [item["item_id"] for item in body["items"]] == ["popular", "less"]
    # Graph (the user's state) is down: no session context to serve from, so the placement's popular fallback,
    # from PostgreSQL.
    assert body["degraded"] == [
        "user_state_unavailable", "graph_unavailable", "fallback_popular", "impression_log_failed"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "user_id"),
        ({"user_id": "u", "k": 0}, "k"),
        ({"user_id": "u", "k": 101}, "k"),
        ({"user_id": "u", "k": "x"}, "k"),
    ],
)
def test_bad_query_is_400(api_client, params, field):
    response = api_client.get("/api/v1/recommendations", params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_each_query_is_validated_on_its_own(api_client, clean_redis):
    ItemFactory(external_id="p1")
    ItemFactory(external_id="p2")
    ingest_views({"p1": 5, "p2": 10})

    bad = api_client.get("/api/v1/recommendations", {"user_id": "u", "k": 0, "placement": "x" * 101})
    one = api_client.get("/api/v1/recommendations", {"user_id": "u", "k": 1})
    default = api_client.get("/api/v1/recommendations", {"session_id": "s"})

    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"k", "placement"}
    assert [item["item_id"] for item in one.json()["items"]] == ["p2"]
    assert default.status_code == 200 and len(default.json()["items"]) == 2  # no k from the request before


def test_recommendations_require_a_key(anonymous_client):
    response = anonymous_client.get("/api/v1/recommendations", {"user_id": "u1"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_similar_items_by_embedding(api_client, catalog):
    response = api_client.get("/api/v1/items/anchor/similar", {"k": 2})

    assert response.status_code == 200
    assert [item["item_id"] for item in response.json()["items"]] == ["near", "middle"]


def test_similar_items_of_unknown_item_is_404(api_client):
    assert api_client.get("/api/v1/items/ghost/similar").status_code == 404


def test_similar_items_bad_k_is_400(api_client, catalog):
    response = api_client.get("/api/v1/items/anchor/similar", {"k": -1})
    assert response.status_code == 400
    assert "k" in response.json()["errors"]


def test_similar_items_are_cached_per_item_and_marked_stale_when_it_changes(
    api_client, catalog, clean_redis, django_assert_num_queries, django_capture_on_commit_callbacks
):
    api_client.get("/api/v1/items/anchor/similar", {"k": 2})  # builds the item-keyed cache (and warms the key)

    with django_assert_num_queries(1):  # the existence check only
        cached = api_client.get("/api/v1/items/anchor/similar", {"k": 2}).json()
    with django_capture_on_commit_callbacks(execute=True):
        api_client.put("/api/v1/items/anchor", {"title": "Anchor, renamed"}, format="json")

    assert [item["item_id"] for item in cached["items"]] == ["near", "middle"]
    stored = clean_redis.get(redis_keys.item_cache("anchor", "similar_items"))
    assert stored.startswith(b"i1") and stored[2:18] == b"0" * 16  # stale: rebuilt by the next reader


def test_a_cold_user_gets_explained_knowledge_graph_neighbours_first(
    api_client, clean_redis, django_capture_on_commit_callbacks
):
    from graph_app.neighbourhoods import neighbourhoods_refresh

    with django_capture_on_commit_callbacks(execute=True):
        for item_id, brand, in_stock in [("tea-cup", "retrospot", True), ("tea-pot", "retrospot", True),
                                         ("cake-tin", "retrospot", False), ("rake", "gardenco", True)]:  # fmt: skip
            api_client.put(
                f"/api/v1/items/{item_id}",
                {"title": item_id, "category": "home", "in_stock": in_stock,
                 "entities": [{"kind": "brand", "id": brand, "name": brand.title()}]},
                format="json",
            )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh()
    clean_redis.lpush(redis_keys.user_recent_items("newcomer"), "tea-cup")

    items = api_client.get("/api/v1/recommendations", {"user_id": "newcomer", "k": 3}).json()["items"]

    assert items[0] == {
        "item_id": "tea-pot", "score": items[0]["score"], "source": "graph",
        "explanation": "Because you like Retrospot", "sources": ["graph", "similar", "fresh"], "propensity": None,
        "rules": [],
    }  # fmt: skip
    assert "cake-tin" not in {item["item_id"] for item in items}  # out of stock
    assert "tea-cup" not in {item["item_id"] for item in items}  # already seen
