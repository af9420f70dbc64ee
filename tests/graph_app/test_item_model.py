"""The item-to-item model (graph_app.item_model, EASE): fitted in closed form, each user's best items listed without
what they bought, searched and gated by each embeddings training, published for retrieval and erased with the
shopper."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from scipy import sparse

from graph_app.item_model import ItemModel, ItemModelSearch, item_model_fit, item_model_lists, item_model_search
from graph_app.model_registry.models import ModelVersion
from graph_app.training import Interactions, embeddings_train, holdout_split
from operations.erasure import shopper_erase
from personalization import redis_keys
from tests.graph_app.tastes import two_tastes_create

pytestmark = pytest.mark.django_db


def _interactions(pairs: list[tuple[int, int]], users: int, items: int) -> Interactions:
    rows = np.array(pairs, dtype=np.int64)
    return Interactions(
        user_ids=[f"u{n}" for n in range(users)], item_ids=[f"i{n}" for n in range(items)],
        users=rows[:, 0], items=rows[:, 1], weights=np.ones(len(rows), dtype=np.float32),
        latest=np.arange(len(rows), dtype=np.float64), purchased=np.ones(len(rows), dtype=bool),
    )  # fmt: skip


def test_the_fit_is_eases_closed_form_over_the_items_most_users_have(settings):
    settings.ITEM_MODEL_MAX_ITEMS = 3
    generator = np.random.default_rng(3)
    dense = generator.random((30, 5)) < 0.5
    dense[:, 4] = False  # nobody has item 4: not covered
    dense[:3, 3] = True
    dense[3:, 3] = False  # item 3: three users only, the least popular of the four with users
    interactions = _interactions([(int(u), int(i)) for u, i in zip(*np.nonzero(dense), strict=True)], 30, 5)

    model = item_model_fit(interactions, None, regularization=2.0)

    covered = np.sort(np.argsort(-dense.sum(axis=0), kind="stable")[:3])
    assert model.items.tolist() == covered.tolist() == [0, 1, 2]
    x = dense[:, covered].astype(np.float64)
    inverse = np.linalg.inv(x.T @ x + 2.0 * np.eye(3))
    expected = -inverse / np.diag(inverse)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(model.weights, expected, rtol=1e-4, atol=1e-5)


def test_a_users_list_sums_the_rows_of_their_items_leaves_out_what_is_excluded_and_keeps_positive_scores():
    weights = np.array([[0.0, 0.5, -0.2, 0.1], [0.3, 0.0, 0.4, -0.6], [0.0, 0.0, 0.0, 0.0], [0.2, 0.1, 0.1, 0.0]])
    model = ItemModel(np.array([0, 2, 3, 5]), weights.astype(np.float32), 1.0)
    # Catalog of 6 items (1 and 4 not covered); user 0 has items 0 and 2, user 1 nothing covered.
    user_items = sparse.csr_matrix(np.array([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0]], dtype=np.float32))
    exclude = sparse.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=np.float32))

    indexes, scores = item_model_lists(model, user_items, exclude=exclude, k=4)

    # User 0: column sums of rows 0 and 1 (items 0 and 2) = [0.3, 0.5, 0.2, -0.5] over catalog items [0, 2, 3, 5];
    # item 0 is excluded and item 5 scores below zero.
    assert indexes[0].tolist() == [2, 3, -1, -1]
    np.testing.assert_allclose(scores[0][:2], [0.5, 0.2], atol=1e-6)
    assert (indexes[1] == -1).all()


@pytest.fixture
def two_tastes():
    """Mug lovers buy mugs, garden lovers buy garden things, each three of the four, in an order of their own (so
    that the latest items, held out, were bought by others before)."""
    two_tastes_create(hours_ago=lambda user, n: 10 - (n + user // 2) % 4)


def _published(clean_redis, user: str) -> list[list[object]] | None:
    raw = clean_redis.hget(redis_keys.user_item_model_lists(redis_keys.partition_of(user)), user)
    return orjson.loads(raw) if raw else None


def test_training_searches_gates_and_publishes_each_users_item_to_item_list(two_tastes, clean_redis):
    report = embeddings_train()

    metrics = ModelVersion.objects.get(version=report.model_version).metrics["item_model"]
    assert [row["regularization"] for row in metrics["tried"]][:1] == [500.0]
    assert metrics["gate"]["users"] == 12
    assert metrics["gate"]["passed"] is True
    assert metrics["gate"]["ndcg@10"] > metrics["gate"]["popularity_ndcg@10"]
    assert metrics["regularization"] in {row["regularization"] for row in metrics["tried"]}
    # u1 bought mug-0..mug-2 (mug-3 not): their list leads with the mug they lack, and holds nothing they bought.
    listed = _published(clean_redis, "u1")
    assert listed is not None
    assert listed[0][0] == "mug-3"
    assert not {"mug-0", "mug-1", "mug-2"} & {item for item, _ in listed}
    assert [score for _, score in listed] == sorted((score for _, score in listed), reverse=True)


def test_the_search_keeps_no_model_that_loses_to_popularity():
    # Every user's latest item is the one item nobody had before: the model cannot list it, popularity's padding can.
    pairs = [(user, item) for user in range(8) for item in (0, 1, 3)]
    interactions = _interactions(pairs, 8, 5)
    latest = np.where(interactions.items == 3, 100.0, 1.0)
    interactions = Interactions(**{**interactions.__dict__, "latest": latest})
    holdout = holdout_split(interactions)
    assert holdout.held_out.sum() == 8  # item 3, for everyone

    found = item_model_search(interactions, holdout, active=None, search=True, budget_seconds=60)

    assert found.regularization is None
    assert found.gate["passed"] is False
    assert found.gate["ndcg@10"] < found.gate["popularity_ndcg@10"]
    assert [row["regularization"] for row in found.tried] == [500.0, 250.0, 1000.0, 2000.0]


def test_without_a_model_that_passed_no_lists_are_served(two_tastes, clean_redis, monkeypatch):
    embeddings_train()
    assert _published(clean_redis, "u1") is not None
    from graph_app import training

    lost = ItemModelSearch(None, [{"regularization": 500.0, "ndcg@10": 0.1}], {"passed": False})
    monkeypatch.setattr(training, "item_model_search", lambda *args, **kwargs: lost)

    report = embeddings_train()

    assert ModelVersion.objects.get(version=report.model_version).metrics["item_model"]["regularization"] is None
    assert _published(clean_redis, "u1") is None


def test_the_model_is_off_with_no_items_allowed(two_tastes, clean_redis, settings):
    settings.ITEM_MODEL_MAX_ITEMS = 0

    report = embeddings_train()

    assert ModelVersion.objects.get(version=report.model_version).metrics["item_model"] is None
    assert _published(clean_redis, "u1") is None


def test_erasure_removes_the_shoppers_list(two_tastes, clean_redis):
    embeddings_train()
    assert _published(clean_redis, "u1") is not None

    shopper_erase(user_id="u1")

    assert _published(clean_redis, "u1") is None
    assert _published(clean_redis, "u3") is not None


def test_the_console_shows_the_versions_item_model_and_its_gate(two_tastes, admin_client):
    report = embeddings_train()
    version = ModelVersion.objects.get(version=report.model_version)
    found = version.metrics["item_model"]

    page = admin_client.get(f"/admin/graph_app/modelversion/{version.pk}/change/")

    assert page.status_code == 200
    gate = found["gate"]
    expected = (
        f"λ={found['regularization']} (best of {len(found['tried'])} tried): this {gate['ndcg@10']:.4f}, "
        f"popularity {gate['popularity_ndcg@10']:.4f} on 12 users"
    )
    assert expected in page.content.decode()
