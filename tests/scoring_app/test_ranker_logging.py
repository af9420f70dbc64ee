"""The ranker's logging policy on the serving path: every slot it serves logs its propensity (apart from the
bandit's), and the pool it drew from is stored for off-policy evaluation; the bandit never learns from it."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from graph_app.state.models import Impression, RankerSlate
from personalization.process_caches import process_caches_reset
from scoring_app.bandit import bandit_learn
from scoring_app.engine.ranking_exploration import policy_from_settings, slot_marginals
from signals_app.consumer import events_drain_all
from tests.scoring_app.test_scoring import bandit_publish, recommend

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_registry():
    process_caches_reset(["score.serving_models"])
    yield
    process_caches_reset(["score.serving_models"])


@pytest.fixture
def trained_shop(django_capture_on_commit_callbacks):
    from graph_app.training import embeddings_train
    from scoring_app.training import ranker_train
    from tests.scoring_app.shop import shop_build

    with django_capture_on_commit_callbacks(execute=True):
        shop_build()
        embeddings_train()
        return ranker_train()


def stored(request_id: str) -> list[tuple[str, float | None, float | None]]:
    rows = Impression.objects.filter(request_id=request_id).order_by("slot")
    return list(rows.values_list("item_id", "logging_propensity", "propensity"))


def test_every_ranker_slot_logs_its_propensity_and_the_pool_is_stored(api_client, trained_shop, settings):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 1.0  # every slate drawn

    body = recommend(api_client, "user-0", k=5)
    assert events_drain_all().impressions == 1

    assert body["path"] == "ranker"
    rows = stored(body["request_id"])
    assert [item_id for item_id, _, _ in rows] == [item["item_id"] for item in body["items"]]
    assert all(0 < logged <= 1 and bandit is None for _, logged, bandit in rows)
    pool = RankerSlate.objects.get(request_id=body["request_id"])
    assert pool.model_version == trained_shop.model_version
    assert len(pool.item_ids) == min(settings.SCORE_RANKER_EXPLORATION_POOL, len(pool.item_ids)) >= 5
    assert len(bytes(pool.features)) == len(pool.item_ids) * len(pool.feature_names) * 4
    assert pool.policy == {"share": 1.0, "temperature": settings.SCORE_RANKER_EXPLORATION_TEMPERATURE,
                           "pool": settings.SCORE_RANKER_EXPLORATION_POOL}  # fmt: skip
    # Each served slot: its pool row, draw slot, served slot and propensity, which is the policy's marginal.
    assert [(pool.item_ids[row], draw, served) for row, draw, served, _ in pool.shown] == [
        (item_id, slot, slot) for slot, (item_id, _, _) in enumerate(rows)
    ]
    marginals = slot_marginals(
        scores=np.array(pool.logging_scores), k=5, policy=policy_from_settings(), rng=np.random.default_rng(0)
    )
    expected = [marginals[row, draw] for row, draw, _, _ in pool.shown]
    assert [logged for _, logged, _ in rows] == pytest.approx(expected, abs=1e-6)
    assert [propensity for _, _, _, propensity in pool.shown] == pytest.approx(expected, abs=1e-6)


def test_a_refresh_shows_the_same_drawn_slate(api_client, trained_shop, settings):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 1.0

    first, second = recommend(api_client, "user-1", k=8), recommend(api_client, "user-1", k=8)

    assert [item["item_id"] for item in first["items"]] == [item["item_id"] for item in second["items"]]


def test_the_bandit_learns_from_its_own_slot_only(api_client, trained_shop, clean_redis, settings):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 1.0
    bandit_publish(clean_redis)

    body = recommend(api_client, "someone-new", k=5)  # the ranker is unsure: the bandit explores the last slot
    events_drain_all()
    report = bandit_learn(label_window=timedelta(0))

    rows = stored(body["request_id"])
    assert [(logged is not None, bandit is not None) for _, logged, bandit in rows] == [(True, False)] * 4 + [
        (False, True)
    ]
    assert report.learned == 1
    fed = Impression.objects.filter(request_id=body["request_id"]).exclude(bandit_cost=None)
    assert list(fed.values_list("slot", flat=True)) == [4]
    # The pool's evaluable part is the ranker's four slots.
    assert [served for _, _, served, _ in RankerSlate.objects.get(request_id=body["request_id"]).shown] == [0, 1, 2, 3]


def test_without_exploration_every_propensity_is_1_and_the_pool_log_share_is_honoured(
    api_client, trained_shop, settings
):
    settings.SCORE_RANKER_EXPLORATION_SHARE = 0.0
    settings.SCORE_RANKER_POOL_LOG_SHARE = 0.0

    body = recommend(api_client, "user-2", k=5)
    events_drain_all()

    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert [logged for _, logged, _ in stored(body["request_id"])] == [1.0] * 5
    assert not RankerSlate.objects.exists()


def test_context_items_lead_undrawn_and_the_draw_fills_the_shelf_after_them(trained_shop, settings):
    from graph_app.similar_lists import similar_lists_refresh
    from scoring_app.engine.retrieval import candidates_retrieve, user_state_fetch
    from scoring_app.engine.scoring import slate_score

    settings.SCORE_RANKER_EXPLORATION_SHARE = 1.0
    similar_lists_refresh(k=5)
    state = user_state_fetch(user_key="user-0", seeds=["lights-3"])
    candidate_set, _ = candidates_retrieve(state=state)

    result = slate_score(state=state, candidate_set=candidate_set, placement="product_page", k=20, explore_slot=9)

    shelf = result.items[:10]
    leading = [item for item in shelf if "context" in item.sources]
    assert result.path == "ranker" and 0 < len(leading) < 10
    assert shelf[: len(leading)] == leading  # the context's items first, in the ranker's order, not drawn
    assert [item.score for item in leading] == sorted((item.score for item in leading), reverse=True)
    assert all(item.logging_slot is None for item in leading)
    drawn = shelf[len(leading) :]
    assert [item.logging_slot for item in drawn] == list(range(len(drawn)))
    assert all(0 < item.logging_propensity <= 1 for item in drawn)
    assert all(item.logging_slot is None for item in result.items[10:])  # beyond the shelf: the ranker's order
    record = result.ranker_pool.record(result.items[:10])
    assert [served for _, _, served, _ in record["shown"]] == list(range(len(leading), 10))
