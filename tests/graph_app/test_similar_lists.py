"""Every item's nearest items by embedding, computed in batch and published for retrieval."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from graph_app.similar_lists import similar_lists_compute, similar_lists_publish, similar_lists_refresh
from personalization import redis_keys
from tests.factories import ItemFactory, unit


def test_each_row_gets_its_exact_nearest_other_rows_by_cosine_nearest_first():
    generator = np.random.default_rng(3)
    vectors = generator.standard_normal((300, 16)).astype(np.float32) * generator.uniform(0.1, 5, (300, 1))

    indexes, scores = similar_lists_compute(vectors, k=5)

    normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = normalized @ normalized.T
    np.fill_diagonal(cosines, -np.inf)
    expected = np.argsort(-cosines, axis=1)[:, :5]
    assert (indexes == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(cosines, expected, axis=1), atol=1e-5)


def test_a_zero_vector_gets_no_neighbours_and_small_catalogs_fill_what_they_can():
    vectors = np.array([[1, 0], [0, 0], [0.9, 0.1]], dtype=np.float32)

    indexes, _ = similar_lists_compute(vectors, k=4)

    assert (indexes[1] == -1).all()
    assert indexes[0][0] == 2 and indexes[2][0] == 0
    assert 1 not in indexes[0]  # nor is it anybody's neighbour


def test_publish_replaces_the_served_lists_as_a_whole(clean_redis):
    clean_redis.hset(redis_keys.ITEM_SIMILAR_LISTS, "gone", b"[]")

    published = similar_lists_publish(
        item_ids=["a", "b", "c"], vectors=np.array([unit(1, 0), unit(1, 0.2), unit(0, 1)], dtype=np.float32), k=1
    )

    assert published == 3
    stored = {
        key.decode(): orjson.loads(value) for key, value in clean_redis.hgetall(redis_keys.ITEM_SIMILAR_LISTS).items()
    }
    assert set(stored) == {"a", "b", "c"}  # the old list of an item no longer in the catalog is gone
    assert [item_id for item_id, _ in stored["a"]] == ["b"]
    assert stored["a"][0][1] == pytest.approx(float(np.dot(unit(1, 0), unit(1, 0.2))), abs=1e-5)
    assert clean_redis.keys("similar:{catalog}:*") == []  # no staging or retired hash left behind


@pytest.mark.django_db
def test_refresh_reads_the_embeddings_postgresql_keeps(clean_redis):
    ItemFactory(external_id="mug", embedding=unit(1, 0))
    ItemFactory(external_id="cup", embedding=unit(1, 0.1))
    ItemFactory(external_id="bag", embedding=unit(0, 1))
    ItemFactory(external_id="no-vector", embedding=None)

    assert similar_lists_refresh(k=1) == 3

    payload = clean_redis.hget(redis_keys.ITEM_SIMILAR_LISTS, "mug")
    assert [item_id for item_id, _ in orjson.loads(payload)] == ["cup"]
    assert clean_redis.hget(redis_keys.ITEM_SIMILAR_LISTS, "no-vector") is None


def test_a_failed_build_keeps_the_lists_served(clean_redis, monkeypatch):
    similar_lists_publish(item_ids=["a", "b"], vectors=np.array([unit(1, 0), unit(1, 0.2)], dtype=np.float32), k=1)
    served = clean_redis.hgetall(redis_keys.ITEM_SIMILAR_LISTS)

    def broken(*args, **kwargs):
        raise RuntimeError("Redis out of memory")

    monkeypatch.setattr("graph_app.similar_lists.similar_lists_compute", broken)
    with pytest.raises(RuntimeError):
        similar_lists_publish(item_ids=["a"], vectors=np.array([unit(1, 0)], dtype=np.float32))

    assert clean_redis.hgetall(redis_keys.ITEM_SIMILAR_LISTS) == served


def _clustered(count: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    centres = generator.standard_normal((40, 16))
    return (centres[generator.integers(0, 40, count)] + 0.3 * generator.standard_normal((count, 16))).astype(np.float32)


def test_above_the_exact_limit_the_lists_are_approximate_and_nearly_all_right(settings):
    vectors = _clustered(4000, 5)
    vectors[7] = 0.0
    exact, _ = similar_lists_compute(vectors, k=10)
    settings.SIMILAR_LISTS_EXACT_MAX_ITEMS = 1000

    approximate, cosines = similar_lists_compute(vectors, k=10)

    recall = np.mean([len(set(approximate[row]) & set(exact[row])) / 10 for row in range(len(vectors)) if row != 7])
    assert recall >= 0.9
    assert (approximate[7] == -1).all() and 7 not in approximate
    assert not (approximate == np.arange(len(vectors))[:, None]).any()  # never an item's own neighbour
    normalized = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    found = approximate[0][approximate[0] >= 0]
    np.testing.assert_allclose(cosines[0][: len(found)], normalized[found] @ normalized[0], atol=1e-5)
    assert (np.diff(cosines[0]) <= 1e-6).all()  # nearest first


@pytest.mark.parametrize("exact_limit", [100_000, 100])
def test_only_the_rows_asked_for_get_a_list_the_same_as_from_the_whole(settings, exact_limit):
    settings.SIMILAR_LISTS_EXACT_MAX_ITEMS = exact_limit
    vectors = _clustered(600, 9)
    whole, whole_scores = similar_lists_compute(vectors, k=5)

    some, some_scores = similar_lists_compute(vectors, k=5, rows=np.array([3, 50, 599]))

    assert (some[[3, 50, 599]] == whole[[3, 50, 599]]).all()
    np.testing.assert_allclose(some_scores[[3, 50, 599]], whole_scores[[3, 50, 599]], atol=1e-6)
    assert (np.delete(some, [3, 50, 599], axis=0) == -1).all()
