"""The Score layer's paths through the API: ranker, canary, bandit, fallback."""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import pytest

from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.services import model_version_canary, model_version_create, model_version_publish
from graph_app.training import embeddings_train
from personalization.process_caches import process_caches_reset
from scoring_app.engine.bandit import bandit_model_dump, bandit_model_new
from scoring_app.training import ranker_train
from signals_app.services import events_ingest
from tests.scoring_app.shop import shop_build

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_registry():
    process_caches_reset(["score.serving_models"])
    yield
    process_caches_reset(["score.serving_models"])


@pytest.fixture
def trained_shop(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        shop_build()
        embeddings_train()  # the training chain's order: the ranker learns from the serving embeddings' sources
        report = ranker_train()
    # The shopper buys more of their favourite category now.
    events_ingest(
        raw_events=[
            {"event_id": f"now-{n}", "type": "purchase", "user_id": "user-0", "item_id": f"mugs-{n}"} for n in range(4)
        ]
    )
    return report


def recommend(api_client, user_id: str, k: int = 5) -> dict:
    response = api_client.get("/api/v1/recommendations", {"user_id": user_id, "placement": "home", "k": k})
    assert response.status_code == 200
    return response.json()


def test_a_known_shopper_is_ranked_by_the_active_model(api_client, trained_shop, settings):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 0.0  # the ranker's own order (its logging policy draws some slates)
    body = recommend(api_client, "user-0")

    assert body["path"] == "ranker"
    assert body["model_version"] == trained_shop.model_version
    scores = [item["score"] for item in body["items"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert body["confidence"] >= 0.3
    assert all(item["sources"] and item["propensity"] is None for item in body["items"])
    # Their favourite category leads, and nothing they just bought comes back.
    assert body["items"][0]["item_id"].startswith("mugs-")
    assert not {item["item_id"] for item in body["items"]} & {f"mugs-{n}" for n in range(4)}


def test_a_canary_serves_its_share_of_users(api_client, trained_shop, django_capture_on_commit_callbacks):
    active = ModelVersion.objects.get(version=trained_shop.model_version)
    with django_capture_on_commit_callbacks(execute=True):
        canary = model_version_create(
            kind="ranker", artifact=bytes(active.artifact), metrics={}, feature_names=active.feature_names
        )
        model_version_canary(model_version=canary, percent=100)

    assert recommend(api_client, "user-0")["model_version"] == canary.version


def bandit_publish(clean_redis) -> None:
    """An untrained bandit (it learned nothing: a uniform PMF), serving."""
    model_version_publish(kind="bandit", artifact=bandit_model_dump(bandit_model_new()), metrics={})
    process_caches_reset(
        ["score.serving_models"]
    )  # published in the test's transaction: read from the database, not the snapshot
    clean_redis.hdel("models:serving", "bandit")


def propensities(body: dict) -> list[bool]:
    return [item["propensity"] is not None for item in body["items"]]


def test_a_new_shopper_is_ranked_and_the_bandit_explores_one_slot(api_client, trained_shop, clean_redis):
    bandit_publish(clean_redis)

    body = recommend(api_client, "someone-new")

    assert body["path"] == "ranker"
    assert body["model_version"] == trained_shop.model_version
    assert body["confidence"] == 0.0
    assert propensities(body) == [False] * 4 + [True]
    assert 0 < body["items"][-1]["propensity"] <= 1
    assert len({item["item_id"] for item in body["items"]}) == 5


def test_without_a_ranker_a_new_shopper_gets_the_bandits_slate(api_client, clean_redis):
    shop_build(users=3)
    bandit_publish(clean_redis)

    body = recommend(api_client, "someone-new")

    assert body["path"] == "bandit"
    assert body["model_version"].startswith("bandit-")
    assert all(0 < item["propensity"] <= 1 for item in body["items"])
    assert len({item["item_id"] for item in body["items"]}) == 5
    assert {source for item in body["items"] for source in item["sources"]} <= {"popular", "fresh", "category_popular"}


def test_without_a_ranker_a_shopper_with_history_gets_retrieval_order_and_one_explored_slot(api_client, clean_redis):
    shop_build(users=3)
    bandit_publish(clean_redis)

    body = recommend(api_client, "user-0")

    assert body["path"] == "fallback"
    assert "ranker_unavailable" in body["degraded"]
    assert propensities(body) == [False] * 4 + [True]


def test_an_unsure_ranker_keeps_its_order_and_the_bandit_explores_its_last_slots_only(
    trained_shop, clean_redis, settings
):
    from scoring_app.engine.retrieval import candidates_retrieve, user_state_fetch
    from scoring_app.engine.scoring import NEXT_BEST_OFFERED, slate_score

    bandit_publish(clean_redis)
    settings.SCORE_MIN_RANKER_CONFIDENCE = 1.01  # the replayed shop: the ranker unsure for nearly every customer
    settings.SCORE_EXPLORATION_SLOTS = 2
    settings.SCORE_RANKER_EXPLORATION_SHARE = 0.0  # the ranker's own order (its logging policy draws some slates)
    state = user_state_fetch(user_key="user-0")
    candidate_set, _ = candidates_retrieve(state=state)

    plain = slate_score(state=state, candidate_set=candidate_set, placement="home", k=20, scorer="ranker")
    explored = slate_score(state=state, candidate_set=candidate_set, placement="home", k=20, explore_slot=9)

    ranked = [item.item_id for item in plain.items]
    served = [item.item_id for item in explored.items]
    picked = served[8:10]
    assert explored.path == "ranker" and plain.path == "ranker"
    assert plain.bandit_log is None and all(item.propensity is None for item in plain.items)
    assert served[:8] == ranked[:8]  # the ranker's order, untouched above the explored slots
    assert [item.propensity is not None for item in explored.items] == [False] * 8 + [True, True] + [False] * 10
    assert set(picked) <= set(ranked[8 : 8 + NEXT_BEST_OFFERED])  # among the ranker's next best
    assert served[10:] == [item_id for item_id in ranked[8:] if item_id not in picked][:10]
    # The decision is logged for learning: the two picks, and the rest of what was offered.
    assert set(explored.bandit_log.picks) == set(picked)
    assert len(explored.bandit_log.unshown) == NEXT_BEST_OFFERED - 2
    assert "r=low_confidence" in explored.bandit_log.shared


def test_a_new_shopper_without_a_bandit_gets_the_ranker_order_anyway(api_client, trained_shop):
    body = recommend(api_client, "someone-new")

    assert body["path"] == "ranker"
    assert body["confidence"] == 0.0


def test_without_any_model_retrieval_order_serves_and_says_so(api_client):
    shop_build(users=3)

    body = recommend(api_client, "user-0")

    assert body["path"] == "fallback"
    assert "ranker_unavailable" in body["degraded"]


def test_a_new_item_gets_the_last_slot_of_a_ranked_shelf_through_the_bandit(api_client, trained_shop, clean_redis):
    from graph_app.online import catalog_online_rebuild
    from graph_app.services import ItemInput, item_upsert

    # Nothing like what user-0 buys (a mug lover): the ranker would not show it, only exploration does.
    item_upsert(data=ItemInput(external_id="brand-new", title="Garden hose reel", category="garden"))
    catalog_online_rebuild()
    bandit_publish(clean_redis)

    body = recommend(api_client, "user-0")

    assert body["path"] == "ranker"
    assert [item["propensity"] is None for item in body["items"]] == [True] * 4 + [False]
    assert body["items"][-1]["item_id"] == "brand-new"
    assert body["items"][-1]["propensity"] == 1.0  # the only new item


def test_preview_explains_ranked_items_with_their_top_feature_contributions(trained_shop, clean_redis):
    from graph_app.features.definitions import FEATURE_NAMES
    from surface_app.preview import preview_explain

    served, _ = preview_explain(placement="home", user_id="user-0", k=5)

    assert served.path == "ranker"
    assert [item.slot for item in served.items] == [1, 2, 3, 4, 5]
    assert all(item.contributions for item in served.items)
    assert {name for item in served.items for name, _ in item.contributions} <= set(FEATURE_NAMES)
    top = served.items[0].contributions
    assert [abs(value) for _, value in top] == sorted((abs(value) for _, value in top), reverse=True)


@pytest.mark.skipif(importlib.util.find_spec("lleaves") is None, reason="lleaves is installed on Python < 3.13 only")
def test_served_rankers_are_compiled_and_score_as_lightgbm_does(trained_shop, settings):
    from graph_app.features.online import features_fetch
    from scoring_app.engine.ranking import ranker_inputs, ranker_load, ranker_scores

    artifact = bytes(ModelVersion.objects.get(version=trained_shop.model_version).artifact)
    compiled = ranker_load(artifact)
    features = features_fetch(
        user_key="user-0", item_ids=[f"mugs-{n}" for n in range(10)], placement="home", now=time.time()
    )

    assert compiled.compiled is not None
    expected = compiled.booster.predict(ranker_inputs(compiled, features), num_threads=1)
    assert ranker_scores(compiled, features) == pytest.approx(expected, abs=1e-9)
    # The object code is kept by the artifact's hash: the next process loads it instead of compiling.
    assert list((settings.DATA_DIR / "compiled-models").glob("ranker-*.o"))
    settings.SCORE_RANKER_COMPILE = False
    plain = ranker_load(artifact)
    assert plain.compiled is None
    assert ranker_scores(plain, features) == pytest.approx(expected, abs=1e-12)


def test_without_lleaves_lightgbm_scores_and_nothing_is_logged_as_failed(trained_shop, monkeypatch, caplog):
    """Python 3.13 installs no lleaves (requirements.txt): serving scores with LightGBM itself, quietly."""
    from graph_app.features.online import features_fetch
    from scoring_app.engine.ranking import ranker_inputs, ranker_load, ranker_scores

    monkeypatch.setitem(sys.modules, "lleaves", None)  # what `import lleaves` meets where it is not installed
    artifact = bytes(ModelVersion.objects.get(version=trained_shop.model_version).artifact)
    features = features_fetch(
        user_key="user-0", item_ids=[f"mugs-{n}" for n in range(10)], placement="home", now=time.time()
    )

    loaded = ranker_load(artifact)

    assert loaded.compiled is None
    expected = loaded.booster.predict(ranker_inputs(loaded, features), num_threads=1)
    assert ranker_scores(loaded, features).tolist() == pytest.approx(expected.tolist(), abs=1e-12)
    assert "score.ranker_compile_failed" not in caplog.messages


def test_only_items_that_never_had_an_event_count_as_new():
    from scoring_app.engine.scoring import NEW_ITEM_DAYS, new_item_rows

    popularity = np.array([0.0, np.nan, 0.0, 3.5, 0.0])
    age_days = np.array([1.0, 1.0, NEW_ITEM_DAYS + 1, 1.0, np.nan])

    # Row 1 had events long ago (its popularity expired): a quiet old item, not a new one.
    assert new_item_rows(popularity, age_days).tolist() == [0]
