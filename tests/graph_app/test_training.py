from __future__ import annotations

import numpy as np
import pytest

from graph_app.model_registry.models import ModelVersion
from graph_app.models import Item, Shopper
from graph_app.training import (
    TOP_K,
    AlsSettings,
    Interactions,
    embeddings_train,
    holdout_popularity,
    holdout_split,
    ndcg_at_k,
    popularity_scores,
    top_k_items,
)
from personalization import redis_keys
from tests.factories import EventFactory, ItemFactory
from tests.graph_app.tastes import two_tastes_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_tastes():
    """Mug lovers buy mugs, garden lovers buy garden things: ALS must separate the two groups."""
    two_tastes_create()


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

    embeddings_train(als=AlsSettings(regularization=0.1, alpha=1.0))  # fitted closely: a dozen users only

    lists = clean_redis.hgetall(redis_keys.user_nearest_lists(redis_keys.partition_of("u3")))
    assert list(lists) == [b"u3"]  # only the most active user fits the limit
    nearest = orjson.loads(lists[b"u3"])
    # The catalog without the three mugs u3 bought, best first by the raw factors' dot product: the mug u3 only
    # looked at leads, then the pots.
    assert [item_id for item_id, _ in nearest][:1] == ["mug-1"]
    assert sorted(item_id for item_id, _ in nearest[1:]) == ["pot-0", "pot-1", "pot-2", "pot-3"]
    assert [score for _, score in nearest] == sorted((score for _, score in nearest), reverse=True)


def test_training_tunes_on_a_time_based_holdout_and_stores_its_settings_and_gate(two_tastes):
    report = embeddings_train()

    version = ModelVersion.objects.get(version=report.model_version)
    gate = version.metrics["gate"]
    # Every shopper's latest purchase is held out (they have three each); the chosen model finds those far better
    # than popularity can (the two tastes are equally popular).
    assert gate["users"] == 12
    assert gate["passed"] is True
    assert gate["ndcg@10"] > gate["popularity_ndcg@10"] + 0.1
    tried = version.metrics["search"]["tried"]
    assert len(tried) > 1 and tried[0]["regularization"] == 30.0 and tried[0]["alpha"] == 1.4
    chosen = version.metrics["settings"]
    # The chosen settings are among those tried, and no worse than the defaults they had to beat beyond noise.
    row = next(
        row for row in tried if (row["regularization"], row["alpha"]) == (chosen["regularization"], chosen["alpha"])
    )
    assert row["ndcg@10"] >= tried[0]["ndcg@10"] == gate["ndcg@10"] or row["ndcg@10"] == gate["ndcg@10"]
    assert report.settings == version.metrics["settings"]


def test_a_model_worse_than_popularity_is_stored_but_never_serves(two_tastes, monkeypatch, clean_redis):
    first = embeddings_train()
    before = _vector("mug-1")
    from graph_app import training

    def worse_than_popularity(interactions, holdout, factors, **_):  # whatever it fits, it loses to the best sellers
        return training.HoldoutScores(0.05, 0.4, np.full(len(holdout.users), 0.05))

    monkeypatch.setattr(training, "holdout_evaluate", worse_than_popularity)

    report = embeddings_train()

    assert report.promoted is False
    assert report.gate["ndcg@10"] < report.gate["popularity_ndcg@10"]
    assert ModelVersion.objects.get(version=report.model_version).state == "candidate"
    assert ModelVersion.objects.get(state="active", kind="embeddings").version == first.model_version
    assert np.allclose(_vector("mug-1"), before)  # the served vectors are untouched


def test_search_off_scores_only_the_default_settings(two_tastes, settings):
    settings.TRAINING_SEARCH = False

    report = embeddings_train()

    version = ModelVersion.objects.get(version=report.model_version)
    assert [(row["regularization"], row["alpha"]) for row in version.metrics["search"]["tried"]] == [(30.0, 1.4)]
    assert version.metrics["search"]["enabled"] is False
    gate = version.metrics["gate"]  # still gated: on a dozen users the underfitted defaults may lose to popularity
    assert gate["passed"] is (gate["ndcg@10"] > gate["popularity_ndcg@10"]) is report.promoted


def _interactions(items_per_user: list[int]) -> Interactions:
    users = np.repeat(np.arange(len(items_per_user)), items_per_user)
    items = np.concatenate([np.arange(count) for count in items_per_user])
    return Interactions(
        user_ids=[f"u{user}" for user in range(len(items_per_user))], item_ids=[f"i{item}" for item in range(40)],
        users=users, items=items, weights=np.ones(len(users), dtype=np.float32),
        latest=np.concatenate([np.arange(count, dtype=float) for count in items_per_user]),
        purchased=np.ones(len(users), dtype=bool),
    )  # fmt: skip


def test_the_taste_fold_is_a_random_share_of_the_items_before_the_cut_for_users_with_enough():
    interactions = _interactions([40] * 30 + [4] * 30)

    holdout = holdout_split(interactions)

    assert not (holdout.taste & holdout.held_out).any()
    assert np.array_equal(holdout.search_train, ~holdout.held_out & ~holdout.taste)
    per_user = np.bincount(interactions.users[holdout.taste], minlength=60)
    before_cut = np.bincount(interactions.users[holdout.train], minlength=60)
    # Users with 40 items keep 20-32 of them before the cut, about a quarter of which are the taste fold; users
    # with 4 items keep 2 or 3, too few to lose one.
    assert per_user[30:].sum() == 0
    assert 0.15 < per_user[:30].sum() / before_cut[:30].sum() < 0.35
    # Not the latest items before the cut: drawn at random over the user's history.
    taste_times = interactions.latest[holdout.taste]
    assert taste_times.min() < 5 and len(set(taste_times.tolist())) > 10
    # Deterministic for a seed, different for another.
    assert np.array_equal(holdout_split(interactions).taste, holdout.taste)
    assert not np.array_equal(holdout_split(interactions, seed=7).taste, holdout.taste)


def test_the_search_ranks_settings_by_the_future_and_taste_and_gates_on_the_future(two_tastes):
    report = embeddings_train()

    version = ModelVersion.objects.get(version=report.model_version)
    tried = version.metrics["search"]["tried"]
    assert all("taste_ndcg@10" in row for row in tried)
    assert version.metrics["gate"]["ndcg@10"] == next(
        row["ndcg@10"] for row in tried if row["alpha"] == report.settings["alpha"]
        and row["regularization"] == report.settings["regularization"]
    )  # fmt: skip


def test_popularitys_holdout_figure_is_the_whole_catalogs_searched_through_its_head():
    """holdout_popularity searches only the (10 + most seen) most popular items: it must find what a search of
    the whole catalog finds, each user's ten most popular unseen items."""
    rng = np.random.default_rng(3)
    drawn = zip(rng.integers(0, 300, 6000), rng.zipf(1.3, 6000) % 40, strict=True)
    users, items = np.array(sorted({(int(user), int(item)) for user, item in drawn})).T
    interactions = Interactions(
        user_ids=[f"u{user:03}" for user in range(300)], item_ids=[f"i{item}" for item in range(40)],
        users=users, items=items, weights=np.ones(len(users), dtype=np.float32),
        latest=rng.random(len(users)), purchased=np.zeros(len(users), dtype=bool),
    )  # fmt: skip
    holdout = holdout_split(interactions)
    seen = interactions.matrix(holdout.search_train)[holdout.users]
    popularity = popularity_scores(interactions, holdout.search_train)
    whole, _ = top_k_items(np.ones((len(holdout.users), 1), dtype=np.float32), popularity[:, None], seen, TOP_K)
    expected = round(ndcg_at_k(whole, interactions.matrix(holdout.held_out)[holdout.users]), 6)

    assert len(holdout.users) > 50 and expected > 0
    assert holdout_popularity(interactions, holdout) == expected


def test_a_large_shops_search_fits_its_settings_on_the_scored_users_and_a_sample_of_the_others(two_tastes, monkeypatch):
    from graph_app import training

    fitted = []
    als_fit = training.als_fit

    def recorded(interactions, als, mask=None, **kwargs):
        fitted.append((mask, kwargs.get("start")))
        return als_fit(interactions, als, mask, **kwargs)

    monkeypatch.setattr(training, "als_fit", recorded)
    monkeypatch.setattr(training, "SEARCH_FIT_USERS_MAX", 3)
    interactions = training.interactions_load()
    holdout = holdout_split(interactions)

    report = embeddings_train()

    *searched, final = fitted
    assert searched and final[0] is None and final[1] is not None  # the final fit: every pair, from the search's
    others = set(range(len(interactions.user_ids))) - set(holdout.users.tolist())
    for mask, _ in searched:
        users = set(interactions.users[mask].tolist())
        assert set(holdout.users.tolist()) <= users and len(users & others) <= 3
        assert not (mask & (holdout.held_out | holdout.taste)).any()
    assert report.promoted is True
