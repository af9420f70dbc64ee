"""Retraining the ranker: candidates as serving retrieves them, a time-based holdout, a gate against popularity
and the active model."""

from __future__ import annotations

import importlib.util
from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from graph_app.features.definitions import FEATURE_NAMES, RETRIEVAL_FEATURE_NAMES
from graph_app.model_registry.models import ModelVersion
from graph_app.models import FeatureRow
from graph_app.training import embeddings_train, holdout_split, interactions_load
from scoring_app import training
from scoring_app.ranker import RankingData, ranking_metrics
from scoring_app.tasks import ranker_train_task
from tests.scoring_app.shop import item_ids, shop_build

pytestmark = pytest.mark.django_db


def _trained_shop(users: int = 60) -> None:
    shop_build(users=users)
    embeddings_train()  # the chain's order: the ranker's candidates come from the serving embeddings' settings


def test_first_ranker_learns_from_the_holdout_and_is_promoted():
    _trained_shop()

    report = training.ranker_train()

    assert (report.promoted, report.label_source) == (True, "holdout")
    version = ModelVersion.objects.get(version=report.model_version)
    assert (version.kind, version.state) == ("ranker", "active")
    assert version.feature_names == list(FEATURE_NAMES)
    assert version.training_window_start < version.training_window_end
    # The gate: on users it never trained on, its shelves find what they bought next better than popularity's.
    gate = version.metrics["gate"]
    assert gate["passed"] is True and gate["users"] > 5
    assert gate["ndcg@10"] > gate["popularity_ndcg@10"]
    assert gate["active_ndcg@10"] is None
    assert len(version.metrics["search"]["tried"]) == len(training.RANKER_SEARCH_GRID)
    assert version.metrics["settings"]["num_boost_round"] > 0
    assert sum(version.metrics["feature_importance_gain"][name] for name in RETRIEVAL_FEATURE_NAMES) > 0


def test_holdout_queries_are_what_serving_would_retrieve_before_the_cut():
    _trained_shop()
    interactions = interactions_load()
    holdout = holdout_split(interactions)

    queries = training.holdout_queries(interactions=interactions, holdout=holdout)

    assert queries.users and len(queries.users) == len(queries.items) == len(queries.relevant)
    offsets = queries.offsets()
    for query, items in enumerate(queries.items):
        # Never a recent or bought item; a positive is exactly a held-out item of the user.
        assert not set(items) & queries.excluded[query]
        labels = queries.labels[offsets[query] : offsets[query + 1]]
        relevant = {interactions.item_ids[index] for index in queries.relevant[query]}
        assert [item in relevant for item in items] == labels.astype(bool).tolist()
    retrieval = queries.values[:, [FEATURE_NAMES.index(name) for name in RETRIEVAL_FEATURE_NAMES]]
    assert np.isfinite(retrieval[:, RETRIEVAL_FEATURE_NAMES.index("retrieval_sources")]).all()
    assert (retrieval[:, RETRIEVAL_FEATURE_NAMES.index("retrieval_sources")] >= 1).all()


def test_a_worse_model_stays_a_candidate_with_its_numbers(monkeypatch):
    _trained_shop()
    first = training.ranker_train()
    fit = training.ranker_fit

    def upside_down(*, train: RankingData, **kwargs):
        flipped = RankingData(train.values, train.labels.max() - train.labels, train.group_sizes)
        return fit(train=flipped, **kwargs)

    monkeypatch.setattr(training, "ranker_fit", upside_down)

    second = training.ranker_train()

    assert second.promoted is False
    assert second.gate["ndcg@10"] < second.gate["active_ndcg@10"]
    candidate = ModelVersion.objects.get(version=second.model_version)
    assert candidate.state == "candidate"
    assert candidate.metrics["active_version"] == first.model_version
    assert candidate.metrics["gate"]["passed"] is False
    assert ModelVersion.objects.get(kind="ranker", state="active").version == first.model_version


def test_the_same_data_twice_is_not_worse_and_is_promoted():
    _trained_shop()
    first = training.ranker_train()

    second = training.ranker_train()

    assert second.promoted is True
    assert second.gate["ndcg@10"] == pytest.approx(second.gate["active_ndcg@10"])
    assert ModelVersion.objects.get(version=first.model_version).state == "retired"


def test_attributed_impressions_replace_the_holdout_once_there_are_enough(monkeypatch):
    _trained_shop()
    monkeypatch.setattr(training, "MIN_IMPRESSION_QUERIES", 20)
    served_at = timezone.now() - timedelta(hours=2)
    items = item_ids()
    for slate in range(30):
        for slot in range(4):
            FeatureRow.objects.create(
                request_id=f"r{slate}", slot=slot, user_key=f"user-{slate}", item_id=items[(slate + slot) % len(items)],
                placement="home", served_at=served_at + timedelta(minutes=slate), features=[None] * len(FEATURE_NAMES),
                feature_names=list(FEATURE_NAMES), clicked=slot == slate % 4, purchased=slot == 0 and slate % 4 == 0,
            )  # fmt: skip

    report = training.ranker_train()

    assert report.label_source == "impressions"
    assert (report.queries, report.rows) == (30, 120)


def test_too_little_history_trains_nothing():
    report = training.ranker_train()

    assert (report.model_version, report.promoted) == (None, False)
    assert not ModelVersion.objects.filter(kind="ranker").exists()


def test_the_scheduled_task_trains():
    _trained_shop()

    result = ranker_train_task()

    assert result["promoted"] is True
    assert ModelVersion.objects.filter(kind="ranker", state="active").count() == 1


def test_ranking_metrics_on_hand_made_queries():
    data = RankingData(
        values=np.zeros((5, 1)),
        labels=np.array([0, 1, 0, 0, 0]),
        group_sizes=np.array([3, 2]),
    )
    # Query 1: the relevant row ranked second; query 2 has no relevant row and is not counted.
    metrics = ranking_metrics(scores=np.array([0.9, 0.5, 0.1, 0.3, 0.2]), data=data)

    assert metrics["queries"] == 1
    assert metrics["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert metrics["recall@20"] == 1.0


def test_the_candidates_embeddings_fit_on_the_users_and_a_bounded_sample_of_the_others(monkeypatch):
    from graph_app.training import Interactions

    users = np.repeat(np.arange(50), 3)
    interactions = Interactions(
        user_ids=[f"u{user:02}" for user in range(50)], item_ids=["a", "b", "c"], users=users,
        items=np.tile(np.arange(3), 50), weights=np.ones(150, dtype=np.float32), latest=np.zeros(150),
        purchased=np.zeros(150, dtype=bool),
    )  # fmt: skip
    chosen = np.array([3, 7])
    assert training._fit_users(interactions, chosen).all()  # every user fits: all pairs

    monkeypatch.setattr(training, "RANKER_FIT_USERS_MAX", 10)
    kept = training._fit_users(interactions, chosen)

    fitted = np.unique(users[kept])
    assert len(fitted) == 12 and {3, 7} <= set(fitted.tolist())
    assert np.array_equal(kept, np.isin(users, fitted))  # whole users: all three pairs of each
    assert np.array_equal(training._fit_users(interactions, chosen), kept)  # seeded


def test_a_large_shop_fits_the_candidates_models_once_without_any_training_users_pair(monkeypatch):
    _trained_shop()
    interactions = interactions_load()
    holdout = holdout_split(interactions)
    # The ranker's users: some of the users with a holdout, so that others remain to fit on.
    ranker_users = holdout.users[: len(holdout.users) * 2 // 3]
    train_users, validation_users, gate_users = training._split_users(interactions, ranker_users)
    judged = np.sort(np.concatenate([validation_users, gate_users]))
    content = training.item_content_matrix()
    arguments = {
        "interactions": interactions,
        "holdout": holdout,
        "judged": judged,
        "training": train_users,
        "content": content,
    }
    assert training.candidate_models_fit(**arguments) is None  # every user fits: each set fits its own

    monkeypatch.setattr(training, "RANKER_FIT_USERS_MAX", 5)
    fitted_masks = []
    als_fit = training.als_fit
    monkeypatch.setattr(
        training, "als_fit", lambda i, a, mask=None, **kw: fitted_masks.append(mask) or als_fit(i, a, mask, **kw)
    )
    shared = training.candidate_models_fit(**arguments)

    assert shared is not None and len(fitted_masks) == 1
    fitted_users = set(interactions.users[fitted_masks[0]].tolist())
    assert not fitted_users & set(train_users.tolist())  # a training user's pairs are some set's labels
    assert set(judged.tolist()) <= fitted_users and len(fitted_users - set(judged.tolist())) <= 5
    assert not (fitted_masks[0] & holdout.held_out).any()  # nobody's future
    # A user folded in gets the vector the fit's own user step gives them: close to the fit's, for a fitted user.
    factors = als_fit(interactions, shared.als, fitted_masks[0])
    folded = shared.users_folded_in(interactions, judged, holdout.train)
    cosines = (folded * factors.user_factors[judged]).sum(axis=1) / (
        np.linalg.norm(folded, axis=1) * np.linalg.norm(factors.user_factors[judged], axis=1) + 1e-12
    )
    assert np.median(cosines) > 0.95
    assert np.allclose(factors.item_factors, shared.item_factors)  # seeded: the same fit


def test_a_large_shops_ranker_trains_through_the_shared_models(monkeypatch):
    _trained_shop()
    monkeypatch.setattr(training, "RANKER_USERS_MAX", 40)  # of 60: others remain to fit on
    monkeypatch.setattr(training, "RANKER_FIT_USERS_MAX", 5)
    built = []
    fit = training.candidate_models_fit
    monkeypatch.setattr(training, "candidate_models_fit", lambda **kw: built.append(fit(**kw)) or built[-1])

    report = training.ranker_train()

    assert len(built) == 1 and built[0] is not None
    assert report.rows > 0 and report.queries >= training.MIN_QUERIES
    version = ModelVersion.objects.get(version=report.model_version)
    assert version.metrics["gate"]["users"] > 5


@pytest.mark.skipif(importlib.util.find_spec("lleaves") is None, reason="lleaves is installed on Python < 3.13 only")
def test_a_promoted_ranker_is_compiled_before_serving_hears_of_it(monkeypatch, settings, tmp_path):
    """The publish spike: serving processes must find the object code in the cache, not compile on their requests."""
    import hashlib

    settings.DATA_DIR = tmp_path
    _trained_shop()
    cached_at_promotion = []
    promote = training.model_version_promote

    def promote_checked(*, model_version):
        digest = hashlib.sha256(bytes(model_version.artifact)).hexdigest()[:32]
        cached_at_promotion.append((tmp_path / "compiled-models" / f"ranker-{digest}.o").exists())
        return promote(model_version=model_version)

    monkeypatch.setattr(training, "model_version_promote", promote_checked)

    report = training.ranker_train()

    assert report.promoted is True and cached_at_promotion == [True]
