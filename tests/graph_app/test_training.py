from __future__ import annotations

import numpy as np
import pytest

from graph_app.models import Item, Shopper
from graph_app.training import embeddings_train
from personalization import redis_keys
from scoring_app.models import ModelVersion
from tests.factories import EventFactory, ItemFactory, ShopperFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_tastes():
    """Mug lovers buy mugs, garden lovers buy garden things: ALS must separate the two groups."""
    for n in range(4):
        ItemFactory(external_id=f"mug-{n}", title=f"Ceramic mug {n}", category="kitchen")
        ItemFactory(external_id=f"pot-{n}", title=f"Garden plant pot {n}", category="garden")
    for user in range(12):
        group = "mug" if user % 2 else "pot"
        ShopperFactory(external_id=f"u{user}")
        for n in range(4):
            if (user + n) % 4 != 0:
                EventFactory(event_id=f"e-{user}-{n}", user_id=f"u{user}", item_id=f"{group}-{n}", type="purchase")


def _vector(external_id: str) -> np.ndarray:
    return np.asarray(Item.objects.get(external_id=external_id).embedding)


def test_training_learns_vectors_that_separate_tastes(two_tastes, clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        report = embeddings_train()

    assert (report.items, report.users, report.collaborative_items) == (8, 12, 8)
    active = ModelVersion.objects.get(state="active")
    assert active.version == report.model_version
    assert active.metrics["interactions"] == report.interactions == 36
    assert clean_redis.get(redis_keys.active_model("embeddings")).decode() == report.model_version
    assert set(Item.objects.values_list("embedding_source", flat=True)) == {"collaborative"}
    mug, other_mug, pot = _vector("mug-1"), _vector("mug-2"), _vector("pot-1")
    assert np.linalg.norm(mug) == pytest.approx(1.0, abs=1e-4)
    assert float(mug @ other_mug) > float(mug @ pot) + 0.2
    assert Shopper.objects.filter(embedding__isnull=False).count() == 12


def test_retraining_keeps_one_active_version(two_tastes):
    first = embeddings_train()
    second = embeddings_train()

    assert ModelVersion.objects.filter(state="active").get().version == second.model_version
    assert ModelVersion.objects.get(version=first.model_version).is_active is False


def test_new_item_after_training_lands_near_items_it_resembles(two_tastes, api_client):
    embeddings_train()

    response = api_client.put(
        "/api/v1/items/mug-new", {"title": "Ceramic mug new", "category": "kitchen"}, format="json"
    )

    assert response.json()["embedding_source"] == "content"
    similar = api_client.get("/api/v1/items/mug-new/similar", {"k": 3}).json()["items"]
    assert [item["item_id"].split("-")[0] for item in similar] == ["mug", "mug", "mug"]


def test_training_with_an_empty_log_still_gives_every_item_a_vector():
    ItemFactory(external_id="lonely")

    report = embeddings_train()

    assert (report.interactions, report.collaborative_items) == (0, 0)
    assert Item.objects.get(external_id="lonely").embedding_source == "content"
    assert len(_vector("lonely")) == 64


def test_training_publishes_the_items_nearest_items_and_survives_a_failed_publish(two_tastes, clean_redis, monkeypatch):
    import orjson

    embeddings_train()
    nearest = orjson.loads(clean_redis.hget(redis_keys.ITEM_SIMILAR_LISTS, "mug-1"))
    assert len(nearest) == 7  # every other item, nearest first
    assert {item_id for item_id, _ in nearest[:3]} == {"mug-0", "mug-2", "mug-3"}

    def broken(**kwargs):
        raise RuntimeError("Redis out of memory")

    monkeypatch.setattr("graph_app.training.similar_lists_publish", broken)
    report = embeddings_train()  # derived lists failing must not fail the committed training

    assert ModelVersion.objects.get(state="active").version == report.model_version
    assert orjson.loads(clean_redis.hget(redis_keys.ITEM_SIMILAR_LISTS, "mug-1")) == nearest


def test_training_publishes_each_users_nearest_items_most_active_users_first(two_tastes, clean_redis, settings):
    import orjson

    EventFactory(event_id="e-extra", user_id="u3", item_id="mug-1", type="view")  # u3: the most items
    settings.USER_NEAREST_LISTS_MAX_USERS = 1

    embeddings_train()

    lists = clean_redis.hgetall(redis_keys.user_nearest_lists(redis_keys.partition_of("u3")))
    assert list(lists) == [b"u3"]  # only the most active user fits the limit
    nearest = orjson.loads(lists[b"u3"])
    assert len(nearest) == 8  # the whole (small) catalog, nearest first: a mug lover's mugs lead
    assert {item_id.split("-")[0] for item_id, _ in nearest[:4]} == {"mug"}
    assert [score for _, score in nearest] == sorted((score for _, score in nearest), reverse=True)
