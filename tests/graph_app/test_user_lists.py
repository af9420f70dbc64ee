"""The items nearest each user's vector, computed in batch after each training and published for retrieval."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from graph_app.user_lists import user_lists_compute, user_lists_publish, user_lists_refresh
from personalization import redis_keys
from tests.factories import ItemFactory, ShopperFactory, unit


def test_each_user_gets_the_exact_nearest_items_by_cosine_nearest_first():
    generator = np.random.default_rng(5)
    users = generator.standard_normal((50, 16)).astype(np.float32) * generator.uniform(0.1, 5, (50, 1))
    items = generator.standard_normal((400, 16)).astype(np.float32) * generator.uniform(0.1, 5, (400, 1))

    indexes, scores = user_lists_compute(users, items, k=7)

    cosines = (users / np.linalg.norm(users, axis=1, keepdims=True)) @ (
        items / np.linalg.norm(items, axis=1, keepdims=True)
    ).T
    expected = np.argsort(-cosines, axis=1)[:, :7]
    assert (indexes == expected).all()
    np.testing.assert_allclose(scores, np.take_along_axis(cosines, expected, axis=1), atol=1e-5)


def test_a_zero_user_gets_no_list_items_without_a_vector_are_left_out_and_small_catalogs_fill_what_they_can():
    users = np.array([[1, 0], [0, 0]], dtype=np.float32)
    items = np.array([[0, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)

    indexes, scores = user_lists_compute(users, items, k=4)

    assert indexes[0].tolist() == [1, 2, -1, -1]  # item 0 has no vector
    assert scores[0][0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), abs=1e-5)
    assert (indexes[1] == -1).all()


def test_publish_writes_each_users_list_in_their_partition_and_replaces_the_old_build(clean_redis, settings):
    settings.EVENT_PARTITIONS = 3
    for partition in range(3):
        clean_redis.hset(redis_keys.user_nearest_lists(partition), "gone", b"[]")
    users = [f"user-{n}" for n in range(6)]

    published = user_lists_publish(
        user_ids=users, user_vectors=np.array([unit(1, n) for n in range(6)], dtype=np.float32),
        item_ids=["a", "b"], item_vectors=np.array([unit(1, 0), unit(0, 1)], dtype=np.float32), k=1,
    )  # fmt: skip

    assert published == 6
    stored = {}
    for partition in range(3):
        for user, payload in clean_redis.hgetall(redis_keys.user_nearest_lists(partition)).items():
            assert redis_keys.partition_of(user.decode()) == partition
            stored[user.decode()] = orjson.loads(payload)
    assert set(stored) == set(users)  # the old lists ("gone") went with the old build
    assert stored["user-0"] == [["a", pytest.approx(1.0, abs=1e-5)]]
    assert stored["user-5"][0][0] == "b"  # unit(1, 5) is nearer (0, 1)
    assert [key for key in clean_redis.keys("nearest:*") if b"staging" in key] == []


def test_publish_keeps_the_first_users_up_to_the_limit_and_zero_turns_the_lists_off(clean_redis, settings):
    settings.EVENT_PARTITIONS = 1
    vectors = np.array([unit(1, 0), unit(0, 1), unit(1, 1)], dtype=np.float32)
    items = {"item_ids": ["a"], "item_vectors": np.array([unit(1, 0)], dtype=np.float32)}
    settings.USER_NEAREST_LISTS_MAX_USERS = 2

    assert user_lists_publish(user_ids=["first", "second", "third"], user_vectors=vectors, **items) == 2
    assert set(clean_redis.hgetall(redis_keys.user_nearest_lists(0))) == {b"first", b"second"}

    settings.USER_NEAREST_LISTS_MAX_USERS = 0
    assert user_lists_publish(user_ids=["first", "second", "third"], user_vectors=vectors, **items) == 0
    assert not clean_redis.exists(redis_keys.user_nearest_lists(0))


@pytest.mark.django_db
def test_refresh_reads_the_embeddings_postgresql_keeps(clean_redis):
    ItemFactory(external_id="mug", embedding=unit(1, 0))
    ItemFactory(external_id="bag", embedding=unit(0, 1))
    ItemFactory(external_id="no-vector", embedding=None)
    ShopperFactory(external_id="mug-lover", embedding=unit(1, 0.1))
    ShopperFactory(external_id="new-user", embedding=None)

    assert user_lists_refresh(k=2) == 1

    lists = clean_redis.hgetall(redis_keys.user_nearest_lists(redis_keys.partition_of("mug-lover")))
    assert list(lists) == [b"mug-lover"]
    assert [item_id for item_id, _ in orjson.loads(lists[b"mug-lover"])] == ["mug", "bag"]


def test_above_the_exact_limit_the_lists_are_approximate_nearly_right_and_leave_out_what_was_bought(settings):
    from scipy import sparse

    generator = np.random.default_rng(8)
    centres = generator.standard_normal((30, 16))
    items = (centres[generator.integers(0, 30, 3000)] + 0.3 * generator.standard_normal((3000, 16))).astype(
        np.float32
    ) * generator.uniform(0.5, 2, (3000, 1)).astype(np.float32)
    users = (centres[generator.integers(0, 30, 200)] + 0.3 * generator.standard_normal((200, 16))).astype(np.float32)
    exact, _ = user_lists_compute(users, items, k=10, normalize=False)
    bought = sparse.csr_matrix(
        (np.ones(200, dtype=np.float32), (np.arange(200), exact[:, 0])), shape=(200, 3000)
    )  # each user bought their best item
    settings.SIMILAR_LISTS_EXACT_MAX_ITEMS = 1000

    approximate, scores = user_lists_compute(users, items, k=10, normalize=False, exclude=bought)

    assert not (approximate == exact[:, :1]).any()  # what was bought is left out
    recall = np.mean([len(set(approximate[row]) & set(exact[row, 1:])) / 9 for row in range(200)])
    assert recall >= 0.85
    np.testing.assert_allclose(scores[0], items[approximate[0]] @ users[0], rtol=1e-4, atol=1e-4)
