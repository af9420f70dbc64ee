"""The caches of the recommendation path against the real Redis: keys, TTLs, build counts, and no stampede across
threads and processes."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import redis
from prometheus_client import REGISTRY
from redis.crc import key_slot

from personalization import cache, redis_keys
from personalization.redis_client import get_redis
from tests.embedded_test_env import PROJECT_ROOT
from tests.integration_helpers import child_env

ITEM = "item-7"
SIMILAR = "similar_items"
USER = "user:42"
CANDIDATES = "candidates"
ITEM_KEY = "cache:item:{item-7}:similar_items"
ITEM_LOCK = "cache:item-lock:{item-7}:similar_items"
USER_KEY = "cache:user:{user:42}:candidates"

# The stampede: this many callers (threads) in this process and in each of the child processes, all at once.
CALLERS_PER_PROCESS = 16
CHILD_PROCESSES = 2
ALL_CALLERS = CALLERS_PER_PROCESS * (1 + CHILD_PROCESSES)
READY = "test:ready"  # INCR by every process once it has imported everything and started its threads
BUILDS = "test:builds"  # INCR by every build, in whichever process it runs
ARRIVED = "test:arrived"  # INCR by every caller just before it reads the cache
RETURNED = "test:returned"  # INCR by every caller once it has its value
GENEROUS_SECONDS = 30.0


class Builds:
    """A build function that counts its calls and returns b"built-<n>"."""

    def __init__(self, *, fails: bool = False) -> None:
        self.calls = 0
        self.fails = fails

    def __call__(self) -> bytes:
        self.calls += 1
        if self.fails:
            raise RuntimeError("the database is down")
        return b"built-%d" % self.calls


def _item_get(build: Callable[[], bytes], **overrides: float) -> bytes:
    options: dict[str, float] = {"fresh_seconds": 60, "stale_seconds": 600, **overrides}
    return cache.item_cache_get(item_key=ITEM, name=SIMILAR, build=build, **options)  # type: ignore[arg-type]


def _store_stale(client: redis.Redis, payload: bytes) -> None:
    """An item value built 61 s ago (fresh for 60 s), so stale now."""
    _item_get(lambda: payload)
    built_at_ms = int(client.get(ITEM_KEY)[2:18]) - 61_000
    client.setrange(ITEM_KEY, 2, b"%016d" % built_at_ms)


def _requests(outcome: str, name: str = SIMILAR) -> float:
    return REGISTRY.get_sample_value("cache_requests_total", {"cache": name, "outcome": outcome}) or 0.0


def _errors(kind: str, name: str = SIMILAR) -> float:
    return REGISTRY.get_sample_value("cache_errors_total", {"cache": name, "kind": kind}) or 0.0


# User-keyed caches.


def test_user_cache_miss_builds_once_and_stores_the_value_with_its_version(clean_redis):
    build = Builds()

    first = cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=build)
    second = cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=build)

    assert first == second == b"built-1"
    assert build.calls == 1
    assert clean_redis.keys("*") == [USER_KEY.encode()]
    assert clean_redis.get(USER_KEY) == b"u1:h1\nbuilt-1"
    assert clean_redis.ttl(USER_KEY) == 120


@pytest.mark.parametrize(("asked", "stored"), [(1, 60), (60, 60), (200, 200), (300, 300), (86_400, 300)])
def test_user_cache_ttl_is_clamped_to_60_to_300_seconds(clean_redis, asked, stored):
    cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", ttl_seconds=asked, build=Builds())

    assert clean_redis.ttl(USER_KEY) == stored


def test_user_cache_new_version_misses_and_replaces_the_old_value(clean_redis):
    build = Builds()
    cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=build)

    after_event = cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h2", build=build)
    again = cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h2", build=build)

    assert after_event == again == b"built-2"
    assert build.calls == 2
    assert clean_redis.keys("*") == [USER_KEY.encode()]
    assert clean_redis.get(USER_KEY) == b"u1:h2\nbuilt-2"


def test_user_caches_are_per_user_and_per_name(clean_redis):
    cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=lambda: b"a")
    cache.user_cache_get_or_build(user_key="user:43", name=CANDIDATES, version="h1", build=lambda: b"b")
    cache.user_cache_get_or_build(user_key=USER, name="affinity_top", version="h1", build=lambda: b"c")

    assert sorted(clean_redis.keys("*")) == [
        b"cache:user:{user:42}:affinity_top",
        b"cache:user:{user:42}:candidates",
        b"cache:user:{user:43}:candidates",
    ]
    assert key_slot(b"cache:user:{user:42}:affinity_top") == key_slot(USER_KEY.encode()) == key_slot(b"user:42")


def test_user_cache_invalidate_deletes_the_value_whatever_its_version(clean_redis):
    build = Builds()
    cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=build)

    assert cache.user_cache_invalidate(user_key=USER, name=CANDIDATES) is True
    assert clean_redis.exists(USER_KEY) == 0
    assert cache.user_cache_invalidate(user_key=USER, name=CANDIDATES) is False
    assert cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=build) == b"built-2"


def test_user_cache_failing_build_raises_and_stores_nothing(clean_redis):
    with pytest.raises(RuntimeError, match="database is down"):
        cache.user_cache_get_or_build(user_key=USER, name=CANDIDATES, version="h1", build=Builds(fails=True))

    assert clean_redis.keys("*") == []


@pytest.mark.parametrize(
    "arguments",
    [
        {"name": "Candidates"},
        {"name": "user-42"},
        {"name": ""},
        {"version": "has space"},
        {"version": "line\nbreak"},
        {"version": ""},
        {"user_key": ""},
    ],
)
def test_user_cache_rejects_names_versions_and_keys_that_would_break_the_key_or_the_metric(clean_redis, arguments):
    call = {"user_key": USER, "name": CANDIDATES, "version": "h1", "build": Builds(), **arguments}

    with pytest.raises(ValueError):
        cache.user_cache_get_or_build(**call)

    assert call["build"].calls == 0
    assert clean_redis.keys("*") == []


# Item-keyed caches: fresh, stale, missing.


def test_item_cache_cold_miss_builds_and_stores_with_build_time_and_fresh_plus_stale_ttl(clean_redis):
    build = Builds()
    before_ms = time.time_ns() // 1_000_000

    value = _item_get(build)

    stored = clean_redis.get(ITEM_KEY)
    assert value == b"built-1"
    assert build.calls == 1
    assert clean_redis.keys("*") == [ITEM_KEY.encode()]  # the lock is gone
    assert stored[:2] == b"i1"
    assert before_ms <= int(stored[2:18]) <= time.time_ns() // 1_000_000
    assert stored[18:] == b"built-1"
    assert clean_redis.ttl(ITEM_KEY) == 660
    assert key_slot(ITEM_KEY.encode()) == key_slot(ITEM_LOCK.encode()) == key_slot(ITEM.encode())


def test_item_cache_fresh_value_is_served_without_building(clean_redis):
    build = Builds()
    _item_get(build)

    assert [_item_get(build) for _ in range(3)] == [b"built-1"] * 3
    assert build.calls == 1


def test_item_cache_stale_value_is_served_while_another_caller_holds_the_rebuild_lock(clean_redis):
    _store_stale(clean_redis, b"old")
    clean_redis.set(ITEM_LOCK, "another caller", px=10_000)
    build = Builds()
    stale_before = _requests("stale")

    assert _item_get(build) == b"old"
    assert _item_get(build) == b"old"

    assert build.calls == 0
    assert clean_redis.get(ITEM_KEY)[18:] == b"old"
    assert clean_redis.get(ITEM_LOCK) == b"another caller"
    assert _requests("stale") - stale_before == 2


def test_item_cache_stale_value_is_rebuilt_inline_by_the_lock_winner(clean_redis):
    _store_stale(clean_redis, b"old")
    build = Builds()

    rebuilt = _item_get(build)
    afterwards = _item_get(build)

    assert rebuilt == afterwards == b"built-1"
    assert build.calls == 1
    assert clean_redis.get(ITEM_KEY)[18:] == b"built-1"
    assert time.time_ns() // 1_000_000 - int(clean_redis.get(ITEM_KEY)[2:18]) < 60_000  # fresh again
    assert clean_redis.ttl(ITEM_KEY) == 660
    assert clean_redis.exists(ITEM_LOCK) == 0


def test_item_cache_stale_read_overtaken_by_a_finished_rebuild_does_not_build_again(clean_redis, monkeypatch):
    """A caller read the stale value just before another caller's rebuild landed: taking the lock checks freshness
    again in the same step, so it serves the new value instead of building a second time."""
    _store_stale(clean_redis, b"old")
    read_before_the_rebuild = clean_redis.get(ITEM_KEY)
    _item_get(Builds())  # another caller's rebuild lands
    monkeypatch.setattr(cache, "_get", lambda client, key: read_before_the_rebuild)
    build = Builds()

    assert _item_get(build) == b"built-1"
    assert build.calls == 0
    assert clean_redis.exists(ITEM_LOCK) == 0


def test_item_cache_failing_rebuild_keeps_serving_the_stale_value_and_releases_the_lock(clean_redis):
    _store_stale(clean_redis, b"old")
    stored = clean_redis.get(ITEM_KEY)
    failing = Builds(fails=True)
    errors_before = _errors("build")

    assert _item_get(failing) == b"old"
    assert _item_get(failing) == b"old"

    assert failing.calls == 2  # each caller retried: the lock was released after each failure
    assert clean_redis.get(ITEM_KEY) == stored
    assert clean_redis.exists(ITEM_LOCK) == 0
    assert _errors("build") - errors_before == 2
    assert _item_get(Builds()) == b"built-1"


def test_item_cache_failing_cold_build_raises_and_leaves_nothing_behind(clean_redis):
    with pytest.raises(RuntimeError, match="database is down"):
        _item_get(Builds(fails=True))

    assert clean_redis.keys("*") == []


def test_item_cache_waiter_raises_when_the_builder_takes_longer_than_the_wait(clean_redis):
    clean_redis.set(ITEM_LOCK, "a slow builder", px=60_000)
    build = Builds()
    timeouts_before = _errors("wait_timeout")

    with pytest.raises(cache.CacheWaitTimeout):
        _item_get(build, wait_seconds=0.05)

    assert build.calls == 0
    assert clean_redis.keys("*") == [ITEM_LOCK.encode()]
    assert _errors("wait_timeout") - timeouts_before == 1


def test_item_cache_waiter_takes_over_when_the_builder_died_and_its_lock_expired(clean_redis):
    clean_redis.set(ITEM_LOCK, "a builder that crashed", px=200)
    build = Builds()

    assert _item_get(build, wait_seconds=GENEROUS_SECONDS) == b"built-1"

    assert build.calls == 1
    assert clean_redis.keys("*") == [ITEM_KEY.encode()]


def test_item_cache_value_not_written_by_this_module_counts_as_missing(clean_redis):
    clean_redis.set(ITEM_KEY, b"something else")

    assert _item_get(Builds()) == b"built-1"
    assert clean_redis.get(ITEM_KEY)[18:] == b"built-1"


# Invalidation.


def test_item_cache_invalidate_marks_stale_without_deleting_and_keeps_the_ttl(clean_redis):
    _item_get(lambda: b"v1")
    clean_redis.expire(ITEM_KEY, 500)

    assert cache.item_cache_invalidate(item_key=ITEM, name=SIMILAR) is True

    assert clean_redis.get(ITEM_KEY) == b"i1" + b"0" * 16 + b"v1"
    assert clean_redis.ttl(ITEM_KEY) == 500
    clean_redis.set(ITEM_LOCK, "another caller", px=10_000)
    assert _item_get(Builds()) == b"v1"  # served stale while someone else rebuilds
    clean_redis.delete(ITEM_LOCK)
    assert _item_get(Builds()) == b"built-1"


def test_item_cache_identity_is_the_payload_and_its_staleness_not_its_build_time(clean_redis):
    _item_get(lambda: b"v1")
    built = clean_redis.get(ITEM_KEY)
    rebuilt = built[:2] + b"9" * 16 + built[18:]  # the same payload, built at another time

    assert cache.item_cache_identity(built) == cache.item_cache_identity(rebuilt) == b"v1"
    cache.item_cache_invalidate(item_key=ITEM, name=SIMILAR)
    assert cache.item_cache_identity(clean_redis.get(ITEM_KEY)) == b"stale:v1"
    assert cache.item_cache_identity(None) == cache.item_cache_identity(b"not ours") == b""


def test_item_cache_invalidate_of_a_missing_value_creates_nothing(clean_redis):
    assert cache.item_cache_invalidate(item_key=ITEM, name=SIMILAR) is False
    assert clean_redis.keys("*") == []


def test_item_cache_invalidation_during_a_build_stores_the_build_as_stale(clean_redis):
    """The build may have read the data before the change that caused the invalidation: it must not count as
    fresh, so the next reader rebuilds."""

    def build_overtaken_by_an_event() -> bytes:
        cache.item_cache_invalidate(item_key=ITEM, name=SIMILAR)
        return b"read before the event"

    assert _item_get(build_overtaken_by_an_event) == b"read before the event"

    assert clean_redis.get(ITEM_KEY) == b"i1" + b"0" * 16 + b"read before the event"
    assert clean_redis.exists(ITEM_LOCK) == 0
    assert _item_get(Builds()) == b"built-1"


def test_item_cache_build_that_lost_its_lock_does_not_overwrite_a_newer_build(clean_redis):
    def build_overtaken_by_a_newer_build() -> bytes:
        clean_redis.delete(ITEM_LOCK)  # our lock expired during a slow build ...
        time.sleep(0.002)
        _item_get(lambda: b"newer")  # ... and another caller built meanwhile
        return b"older"

    assert _item_get(build_overtaken_by_a_newer_build) == b"older"

    assert clean_redis.get(ITEM_KEY)[18:] == b"newer"
    assert _item_get(Builds()) == b"newer"


# Metrics.


def test_item_cache_counts_each_request_once_by_outcome(clean_redis):
    before = {outcome: _requests(outcome) for outcome in ("hit", "stale", "miss", "rebuild", "wait")}
    builds_before = REGISTRY.get_sample_value("cache_build_seconds_count", {"cache": SIMILAR}) or 0.0

    _item_get(Builds())  # miss
    _item_get(Builds())  # hit
    cache.item_cache_invalidate(item_key=ITEM, name=SIMILAR)
    clean_redis.set(ITEM_LOCK, "another caller", px=10_000)
    _item_get(Builds())  # stale
    clean_redis.delete(ITEM_LOCK)
    _item_get(Builds())  # rebuild

    after = {outcome: _requests(outcome) - before[outcome] for outcome in before}
    assert after == {"hit": 1, "stale": 1, "miss": 1, "rebuild": 1, "wait": 0}
    assert REGISTRY.get_sample_value("cache_build_seconds_count", {"cache": SIMILAR}) - builds_before == 2


# No stampede: every caller at once, in threads of this process and of two more processes.


def _wait_for(condition: Callable[[], bool]) -> None:
    """Waits (bounded) without failing: a broken cache must fail the test's assertions, not hang it."""
    deadline = time.monotonic() + GENEROUS_SECONDS
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def _slow_build(mode: str, callers: int) -> bytes:
    """A slow build that runs while every caller is in the cache: on a cold key it lasts until all `callers` have
    arrived and 200 ms more; on a stale key until every other caller has been served."""
    client = get_redis()
    number = client.incr(BUILDS)
    if mode == "cold":
        _wait_for(lambda: int(client.get(ARRIVED) or 0) >= callers)
        time.sleep(0.2)
    else:
        _wait_for(lambda: int(client.get(RETURNED) or 0) >= callers - 1)
    return b"built-%d" % number


def run_stampede_callers(mode: str, callers: int, processes: int = 1) -> list[bytes]:
    """CALLERS_PER_PROCESS threads released together, each reading the item cache once (also run by the child
    processes). No thread starts before every one of the `processes` is ready: a child that is still importing
    Django on a busy machine would otherwise arrive after the others were served, and the lock (held far longer
    than any wait here) keeps one build even when the build waits long for the last caller."""
    client = get_redis()

    def processes_ready() -> None:
        client.incr(READY)
        _wait_for(lambda: int(client.get(READY) or 0) >= processes)

    start = threading.Barrier(CALLERS_PER_PROCESS, action=processes_ready)
    values: list[bytes] = []
    errors: list[BaseException] = []

    def caller() -> None:
        start.wait()
        client.incr(ARRIVED)
        try:
            value = _item_get(
                functools.partial(_slow_build, mode, callers),
                wait_seconds=GENEROUS_SECONDS,
                lock_seconds=2 * GENEROUS_SECONDS,
            )
        except BaseException as error:
            errors.append(error)
            raise
        finally:
            client.incr(RETURNED)
        values.append(value)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return values


CHILD = """
import json, sys
import django
django.setup()
from tests.personalization.test_cache import run_stampede_callers
values = run_stampede_callers(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
print(json.dumps([value.decode() for value in values]))
"""


def _stampede(mode: str) -> list[bytes]:
    env = child_env(DJANGO_SETTINGS_MODULE="config.settings")
    command = [sys.executable, "-c", CHILD, mode, str(ALL_CALLERS), str(1 + CHILD_PROCESSES)]
    children = [
        subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(CHILD_PROCESSES)
    ]
    values = run_stampede_callers(mode, ALL_CALLERS, 1 + CHILD_PROCESSES)
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        values += [value.encode() for value in json.loads(out.strip().splitlines()[-1])]
    return values


def test_cold_item_cache_under_a_stampede_is_built_exactly_once(clean_redis):
    values = _stampede("cold")

    assert len(values) == ALL_CALLERS == 48
    assert int(clean_redis.get(BUILDS)) == 1
    assert values == [b"built-1"] * ALL_CALLERS
    assert clean_redis.get(ITEM_KEY)[18:] == b"built-1"
    assert clean_redis.exists(ITEM_LOCK) == 0


def test_stale_item_cache_under_a_stampede_is_rebuilt_exactly_once_while_the_others_get_the_stale_value(
    clean_redis,
):
    _store_stale(clean_redis, b"old")

    values = _stampede("stale")

    assert len(values) == ALL_CALLERS
    assert int(clean_redis.get(BUILDS)) == 1
    assert sorted(values) == [b"built-1"] + [b"old"] * (ALL_CALLERS - 1)
    assert clean_redis.get(ITEM_KEY)[18:] == b"built-1"
    assert clean_redis.exists(ITEM_LOCK) == 0


def test_cold_item_cache_under_a_stampede_of_threads_counts_one_miss(clean_redis):
    """In one process the outcomes can be counted too: one caller built, every other one waited or (arriving
    after the value landed) hit."""
    before = {outcome: _requests(outcome) for outcome in ("hit", "miss", "rebuild", "wait")}

    values = run_stampede_callers("cold", CALLERS_PER_PROCESS)

    after = {outcome: _requests(outcome) - before[outcome] for outcome in before}
    assert values == [b"built-1"] * CALLERS_PER_PROCESS
    assert int(clean_redis.get(BUILDS)) == 1
    assert after["miss"] == 1
    assert after["rebuild"] == 0
    assert after["wait"] + after["hit"] == CALLERS_PER_PROCESS - 1


def test_erasing_a_users_caches_drops_every_name_of_that_user_only(clean_redis):
    for user_key, name in [("a*b", "candidates"), ("a*b", "user_vector"), ("aXb", "candidates"), ("a*b}:x", "seen")]:
        clean_redis.set(redis_keys.user_cache(user_key, name), b"payload")

    assert cache.user_caches_erase(user_key="a*b") == 2

    # A glob character is no wildcard, and a longer id that starts like this one is another user.
    assert sorted(clean_redis.keys("cache:*")) == [b"cache:user:{a*b}:x}:seen", b"cache:user:{aXb}:candidates"]
