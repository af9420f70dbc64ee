"""Multi-source retrieval in parallel threads, each source with its own deadline (committed data: the threads
read over their own connections)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from personalization import redis_keys
from personalization.candidates import Candidate
from personalization.process_caches import process_caches_reset
from scoring_app.engine import retrieval
from scoring_app.engine.retrieval import RetrievalSource, candidates_retrieve, user_state_fetch
from tests.factories import ItemFactory, ShopperFactory, unit
from tests.signals_app.helpers import ingest_views

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def threads(settings):
    settings.SCORE_RETRIEVAL_THREADS = 4
    # Generous deadlines: other tests and servers share the machine's two cores.
    settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = 20
    retrieval._pool = None
    yield
    if retrieval._pool is not None:
        retrieval._pool.shutdown(wait=True)
    retrieval._pool = None


@pytest.fixture
def shop(clean_redis):
    ItemFactory(external_id="seen", category="mugs", embedding=unit(1, 0))
    ItemFactory(external_id="near", category="mugs", embedding=unit(1, 0.1))
    ItemFactory(external_id="taste", category="bags", embedding=unit(0, 1))
    ItemFactory(external_id="hit", category="bags", embedding=unit(0.5, 0.5), popularity=5)
    ShopperFactory(external_id="u1", embedding=unit(0, 1))
    ingest_views({"hit": 3})
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "seen")


@pytest.fixture
def pooled(monkeypatch) -> list[str]:
    """The names of the sources that ran in the thread pool (the others ran inline)."""
    names: list[str] = []
    run_in_thread = retrieval._run_in_thread

    def counted(source, state):
        names.append(source.name)
        return run_in_thread(source, state)

    monkeypatch.setattr(retrieval, "_run_in_thread", counted)
    return names


def test_every_source_contributes_and_each_candidate_keeps_its_provenance(shop):
    state = user_state_fetch(user_key="u1")

    candidate_set, degraded = candidates_retrieve(state=state)

    by_id = {candidate.item_id: candidate for candidate in candidate_set.candidates}
    assert (degraded, candidate_set.dropped) == ([], [])
    assert "seen" not in by_id  # the user's own recent items are not candidates
    assert by_id["near"].source == "similar"
    assert by_id["taste"].sources[:2] == ("similar", "user_vector")
    assert {"popular", "fresh"} <= set(by_id["hit"].sources)
    assert len(by_id) == 3


def test_a_source_late_for_its_deadline_is_dropped_not_awaited(shop, clean_redis, monkeypatch):
    released = threading.Event()

    def slow(state):
        released.wait(timeout=60)  # until the request is answered: late whatever the machine's speed
        return [Candidate("late-item", 1.0, "slow", "")]

    monkeypatch.setattr(retrieval, "SOURCES", (*retrieval.SOURCES, RetrievalSource("slow", slow, 20.0, True)))
    state = user_state_fetch(user_key="u1")

    try:
        candidate_set, _ = candidates_retrieve(state=state)
    finally:
        released.set()

    assert candidate_set.dropped == ["slow:deadline"]
    assert "late-item" not in {candidate.item_id for candidate in candidate_set.candidates}
    assert {"near", "taste", "hit"} <= {candidate.item_id for candidate in candidate_set.candidates}
    # An incomplete set is served but not cached: the next request tries every source again.
    assert clean_redis.get(redis_keys.user_cache("u1", "candidates")) is None


def test_the_context_source_is_the_last_one_dropped(shop, settings, monkeypatch):
    """A product page's related items are what its shelf is for: the context source is waited for first and
    longest, and the other sources' time runs meanwhile."""
    deadlines = {source.name: source.deadline_ms for source in retrieval.SOURCES}
    assert retrieval.SOURCES[0].name == "context"
    assert deadlines["context"] == max(deadlines.values()) > retrieval.RETRIEVAL_DEADLINE_MS
    settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = 100  # the others: 1 s; the context: 2.5 s
    released = threading.Event()

    def context_past_the_others_deadline(state):
        # 1.5 s: a second past the others' deadline and a second before its own (the margins a busy machine needs).
        time.sleep(1.5 * retrieval.RETRIEVAL_DEADLINE_MS * settings.SCORE_RETRIEVAL_DEADLINE_FACTOR / 1000)
        return [Candidate("related", 1.0, "context", "", ("context",))]

    def never_in_time(state):
        released.wait(timeout=60)
        return [Candidate("other", 1.0, "other", "")]

    monkeypatch.setattr(retrieval, "SOURCES", (
        RetrievalSource("context", context_past_the_others_deadline, retrieval.CONTEXT_DEADLINE_MS, False),
        RetrievalSource("other", never_in_time, retrieval.RETRIEVAL_DEADLINE_MS, False),
    ))  # fmt: skip
    try:
        candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1", seeds=["near"]))
    finally:
        released.set()

    assert candidate_set.dropped == ["other:deadline"]
    assert [candidate.item_id for candidate in candidate_set.candidates] == ["related"]


def test_a_pooled_source_runs_in_the_requests_context_so_its_log_lines_carry_the_request_id(shop, monkeypatch):
    import structlog

    from personalization.log_config import context_clear, request_context_bind

    seen: list[dict[str, object]] = []

    def logging_source(state):
        seen.append(structlog.contextvars.get_contextvars())
        return []

    monkeypatch.setattr(retrieval, "SOURCES", (RetrievalSource("logging", logging_source, 50.0, False),))
    request_id = request_context_bind("req-42")
    try:
        candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))
    finally:
        context_clear()

    assert candidate_set.dropped == []
    assert seen == [{"request_id": "req-42"}]
    assert request_id == "req-42"


def test_a_failing_source_is_dropped_and_the_others_serve(shop, monkeypatch):
    def broken(state):
        from django.db import DatabaseError

        raise DatabaseError("replica gone")

    monkeypatch.setattr(retrieval, "SOURCES", (RetrievalSource("broken", broken, 50.0, True), *retrieval.SOURCES))

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))

    assert candidate_set.dropped == ["broken:error"]
    assert len(candidate_set.candidates) == 3


def test_a_complete_set_is_cached_for_the_user_until_their_state_changes(shop, clean_redis):
    state = user_state_fetch(user_key="u1")
    first, _ = candidates_retrieve(state=state)
    assert 0 < clean_redis.ttl(redis_keys.user_cache("u1", "candidates")) <= retrieval.CANDIDATE_SET_CACHE_SECONDS

    ItemFactory(external_id="newer", category="mugs", embedding=unit(1, 0.05))
    again, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "taste")
    changed, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))

    # Read back from the cache whole: scores, sources, explanations and provenance as built.
    assert again.candidates == first.candidates
    assert all(isinstance(candidate.sources, tuple) for candidate in again.candidates)
    assert "newer" in {c.item_id for c in changed.candidates}


def test_a_cached_set_in_an_earlier_layout_is_rebuilt_not_an_error(shop, clean_redis, monkeypatch):
    first, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))
    monkeypatch.setattr(retrieval, "CANDIDATE_SET_FORMAT", "next")

    again, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))

    assert again.candidates == first.candidates


def test_a_pool_threads_broken_connection_fails_one_query_and_is_replaced(shop, settings):
    """No health query before each source's (a round trip each): a connection the database dropped fails once."""
    from django.db import connection

    def backend_pid(state):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return [Candidate(str(cursor.fetchone()[0]), 1.0, "pid", "")]

    settings.SCORE_RETRIEVAL_THREADS = 1  # every run on the same thread and connection
    source = RetrievalSource("pid", backend_pid, 10_000.0, True)
    state = user_state_fetch(user_key="u1")
    results, dropped = retrieval._sources_run(state, (source,))
    first_pid = int(results["pid"][0].item_id)
    with connection.cursor() as cursor:  # a database restart, as far as that connection can tell
        cursor.execute("SELECT pg_terminate_backend(%s)", [first_pid])

    _, failed_dropped = retrieval._sources_run(state, (source,))
    replaced, replaced_dropped = retrieval._sources_run(state, (source,))

    assert dropped == [] and failed_dropped == ["pid:error"] and replaced_dropped == []
    assert int(replaced["pid"][0].item_id) != first_pid


def test_sources_whose_input_was_read_ahead_run_inline_and_the_rest_in_the_pool(shop, clean_redis, pooled):
    first, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))
    # Nothing cached yet: the pgvector and shared-list sources query PostgreSQL in the pool.
    assert {"similar", "user_vector"} <= set(pooled)
    assert "graph" not in pooled and "popular" not in pooled  # Redis only: read ahead

    pooled.clear()
    clean_redis.delete(redis_keys.user_cache("u1", "candidates"))  # the set is rebuilt from the sources' caches
    again, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))

    assert pooled == []
    assert again.candidates == first.candidates


def test_similar_reads_the_recent_items_precomputed_lists_inline_without_postgresql(
    shop, clean_redis, monkeypatch, pooled
):
    from graph_app.similar_lists import similar_lists_refresh

    ItemFactory(external_id="gone", category="mugs", embedding=unit(1, 0.02), in_stock=False)
    similar_lists_refresh(k=3)
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "taste")  # recent: taste (newest), then seen
    monkeypatch.setattr(retrieval, "_similar_to_recent", lambda state: pytest.fail("pgvector queried"))

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["similar"])

    assert "similar" not in pooled
    similar = [(c.item_id, c.score) for c in candidate_set.candidates]
    # "gone" is out of stock and the recent items are left out. "near" is nearest "seen" (one step older: x0.9),
    # "hit" nearest "taste"; each keeps its best decayed cosine.
    assert [item_id for item_id, _ in similar] == ["near", "hit"]
    scores = dict(similar)
    assert scores["hit"] == pytest.approx(float(np.dot(unit(0, 1), unit(0.5, 0.5))), abs=1e-4)
    assert scores["near"] == pytest.approx(0.9 * float(np.dot(unit(1, 0), unit(1, 0.1))), abs=1e-4)


def test_similar_falls_back_to_pgvector_when_the_newest_recent_item_has_no_list(shop, clean_redis):
    from graph_app.similar_lists import similar_lists_refresh

    similar_lists_refresh(k=3)
    ItemFactory(external_id="brand-new", category="mugs", embedding=unit(1, 0.3))
    # The newest item is newer than the lists; "seen", before it, has one: the lists alone would ignore the item
    # the shopper looks at now.
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "brand-new")

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["similar"])

    # Around the mean of unit(1, 0) and unit(1, 0.3): "near" (1, 0.1) is nearest; the lists alone would not say so
    # with these scores (pgvector's are cosines to the mean).
    assert candidate_set.candidates[0].item_id == "near"
    assert "brand-new" not in {c.item_id for c in candidate_set.candidates}
    mean = np.add(unit(1, 0), unit(1, 0.3))
    expected = float(np.dot(mean, unit(1, 0.1)) / np.linalg.norm(mean))
    assert candidate_set.candidates[0].score == pytest.approx(expected, abs=1e-3)


def test_user_vector_reads_the_users_precomputed_list_inline_without_postgresql(shop, clean_redis, monkeypatch, pooled):
    from graph_app.user_lists import user_lists_refresh

    ItemFactory(external_id="gone", category="bags", embedding=unit(0.01, 1), in_stock=False)
    user_lists_refresh(k=10)
    monkeypatch.setattr(retrieval, "_neighbours_cached", lambda *args, **kwargs: pytest.fail("pgvector queried"))

    candidate_set, degraded = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["user_vector"])

    assert "user_vector" not in pooled and degraded == []
    # Nearest (0, 1) first; "gone" is out of stock and "seen" is a recent item.
    assert [c.item_id for c in candidate_set.candidates] == ["taste", "hit", "near"]
    assert candidate_set.candidates[1].score == pytest.approx(float(np.dot(unit(0, 1), unit(0.5, 0.5))), abs=1e-4)
    assert not clean_redis.exists(redis_keys.user_cache("u1", "user_vector"))  # nothing to cache


def test_user_vector_reads_the_list_in_the_users_partition(shop, clean_redis, monkeypatch, pooled, settings):
    from graph_app.user_lists import user_lists_refresh

    settings.EVENT_PARTITIONS = 4
    user_lists_refresh(k=10)
    monkeypatch.setattr(retrieval, "_neighbours_cached", lambda *args, **kwargs: pytest.fail("pgvector queried"))

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["user_vector"])

    assert redis_keys.partition_of("u1") != 0
    assert clean_redis.hexists(redis_keys.user_nearest_lists(redis_keys.partition_of("u1")), "u1")
    assert [c.item_id for c in candidate_set.candidates] == ["taste", "hit", "near"]


def test_user_vector_queries_pgvector_for_a_user_without_a_list(shop, clean_redis, pooled):
    from graph_app.user_lists import user_lists_refresh

    user_lists_refresh(k=10)
    ShopperFactory(external_id="u2", embedding=unit(1, 0))  # newer than the lists
    clean_redis.lpush(redis_keys.user_recent_items("u2"), "taste")

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u2"), sources=["user_vector"])

    assert pooled == ["user_vector"]
    assert [c.item_id for c in candidate_set.candidates][:2] == ["seen", "near"]


def test_the_stock_check_reads_the_facts_of_items_it_does_not_keep_whole_and_keeps_them(shop, clean_redis):
    from graph_app.features.online import catalog_facts_forget, catalog_stock_kept, features_fetch

    catalog_facts_forget()
    version = clean_redis.get(redis_keys.CATALOG_VERSION)
    features_fetch(user_key="u1", item_ids=["hit"], placement="home", now=time.time())  # follows the version
    assert set(catalog_stock_kept(version)[0]) == {"hit"}
    clean_redis.hset(redis_keys.CATALOG_STATIC, "gone", b"not packed facts")  # unreadable: not in stock

    in_stock = retrieval._in_stock(["near", "taste", "hit", "gone"], user_key="u1", catalog_version=version)

    assert in_stock == {"near", "taste", "hit"}
    kept, kept_in_stock = catalog_stock_kept(version)
    assert {"near", "taste", "gone"} <= set(kept)
    assert len(kept["near"][1]) == 64 * 4  # the embedding came with the stock, for the next feature read
    assert kept_in_stock >= {"near", "taste", "hit"} and "gone" not in kept_in_stock


def test_a_process_shares_the_popular_items_it_read_for_a_second_then_reads_them_again(shop, settings, monkeypatch):
    settings.SCORE_POPULAR_SHARED_SECONDS = 1.0
    clock = [1000.0]
    monkeypatch.setattr(retrieval.time, "monotonic", lambda: clock[0])
    first = user_state_fetch(user_key="u1")
    assert [item_id for item_id, _ in first.popular_items] == ["hit"]

    ingest_views({"near": 5})  # now the most popular, but within the second another user's request reuses
    clock[0] += 0.5
    shared = user_state_fetch(user_key="u2", popular_depth=retrieval.POPULAR_DEPTH)
    assert shared.popular_items is first.popular_items
    assert user_state_fetch(user_key="u2", popular_depth=5).popular_items[0][0] == "near"  # another depth: read

    clock[0] += 1.0
    fresh = user_state_fetch(user_key="u1")
    assert [item_id for item_id, _ in fresh.popular_items] == ["near", "hit"]
    settings.SCORE_POPULAR_SHARED_SECONDS = 0.0  # every request reads them
    assert user_state_fetch(user_key="u1").popular_items is not user_state_fetch(user_key="u1").popular_items


def test_a_set_built_for_serving_is_stored_by_the_feature_reads_round_trip(shop, clean_redis):
    from graph_app.features.online import features_fetch

    # Another shopper's request builds the newest items' shared list, which cached sets are keyed on.
    candidates_retrieve(state=user_state_fetch(user_key="u2"))
    state = user_state_fetch(user_key="u1")
    candidate_set, _ = candidates_retrieve(state=state, defer_store=True)

    key = redis_keys.user_cache("u1", "candidates")
    assert clean_redis.get(key) is None and len(candidate_set.unsaved) == 1
    features = features_fetch(
        user_key="u1", item_ids=[c.item_id for c in candidate_set.candidates], placement="home", now=time.time(),
        writes=candidate_set.unsaved,
    )  # fmt: skip
    assert candidate_set.unsaved == [] and len(features.item_ids) == len(candidate_set.candidates)
    assert 50 <= clean_redis.ttl(key) <= retrieval.CANDIDATE_SET_CACHE_SECONDS
    cached, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"), defer_store=True)
    assert cached.candidates == candidate_set.candidates and cached.unsaved == []  # read back, nothing to store


def test_item_model_reads_the_users_list_inline_in_stock_without_recent_items(shop, clean_redis, pooled):
    import orjson

    from graph_app.features.definitions import RETRIEVAL_FEATURE_NAMES

    ItemFactory(external_id="gone", category="bags", embedding=unit(0.01, 1), in_stock=False)
    listed = [["gone", 0.9], ["taste", 0.6], ["seen", 0.5], ["hit", 0.3]]
    clean_redis.hset(redis_keys.user_item_model_lists(redis_keys.partition_of("u1")), "u1", orjson.dumps(listed))

    candidate_set, degraded = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["item_model"])

    assert "item_model" not in pooled and degraded == []
    # "gone" is out of stock and "seen" is a recent item.
    assert [(c.item_id, c.score, c.source) for c in candidate_set.candidates] == [
        ("taste", 0.6, "item_model"),
        ("hit", 0.3, "item_model"),
    ]
    features = dict(zip(RETRIEVAL_FEATURE_NAMES, candidate_set.retrieval[1], strict=True))
    assert features["retrieval_item_model_score"] == pytest.approx(0.3)
    assert features["retrieval_item_model_share"] == pytest.approx(0.5)
    assert features["retrieval_item_model_log_rank"] == pytest.approx(np.log(2))


def test_item_model_gives_nothing_for_a_user_without_a_list(shop, pooled):
    candidate_set, degraded = candidates_retrieve(state=user_state_fetch(user_key="u1"), sources=["item_model"])

    assert (candidate_set.candidates, degraded, pooled) == ([], [], [])


def test_an_item_that_appears_reaches_a_cached_candidate_set_at_once(shop, clean_redis):
    from graph_app.services import ItemInput, item_upsert

    first, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))
    assert clean_redis.exists(redis_keys.user_cache("u1", "candidates"))  # the set is cached for a minute

    item_upsert(data=ItemInput(external_id="brand-new", title="Brand new bag", category="bags"))
    again, _ = candidates_retrieve(state=user_state_fetch(user_key="u1"))

    assert "brand-new" not in [c.item_id for c in first.candidates]
    assert "fresh" in next(c.sources for c in again.candidates if c.item_id == "brand-new")


def test_while_the_vector_index_is_rebuilt_serving_skips_vector_searches_then_resumes(shop, clean_redis):
    """Without the vector index a vector search scans every item's vector: at a million items they piled up and
    held the machine while a training rebuilt the index. The source is dropped, with why, until it is back."""
    from graph_app.item_vector_index import (
        item_vector_index_build,
        item_vector_index_drop,
    )

    ShopperFactory(external_id="u2", embedding=unit(1, 0))  # no precomputed list: a live vector search
    item_vector_index_drop()
    process_caches_reset(["graph.vector_index_serving"])
    try:
        candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u2"), sources=["user_vector"])
        assert candidate_set.dropped == ["user_vector:vector_index_rebuilding"]
        assert candidate_set.candidates == []
    finally:
        item_vector_index_build()
        process_caches_reset(["graph.vector_index_serving"])

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u2"), sources=["user_vector"])

    assert candidate_set.dropped == []
    assert [c.item_id for c in candidate_set.candidates][:2] == ["seen", "near"]


def test_a_shopper_whose_vector_is_zero_gets_no_user_vector_rows_and_no_error(shop, clean_redis):
    """pgvector's cosine distance to a zero vector is NaN: no row, rather than a score the ranker cannot read
    (a NaN cached as JSON comes back as null)."""
    ShopperFactory(external_id="u-zero", embedding=[0.0] * 64)
    clean_redis.lpush(redis_keys.user_recent_items("u-zero"), "taste")

    candidate_set, _ = candidates_retrieve(state=user_state_fetch(user_key="u-zero"), sources=["user_vector"])
    again, _ = candidates_retrieve(state=user_state_fetch(user_key="u-zero"), sources=["user_vector"])  # cached

    assert [c for c in candidate_set.candidates if c.source == "user_vector"] == []
    assert [c for c in again.candidates if c.source == "user_vector"] == []
