"""Caches on the recommendation path: user-keyed with short TTLs, item-keyed stale-while-revalidate.

Two kinds, because the seam Graph -> Score breaks in two ways (README, "Caches"):

* **User-keyed** (`user_cache_get_or_build`): a user's events change what is right for them within seconds, and
  invalidating every cache that mentions a user on each event is what causes stampedes. So these live 60-300 s
  and carry a `version` (e.g. a hash of the user's recent items): an event changes the version and the next read
  misses, with no invalidation at all. One GET on a hit; on a miss the caller builds and SETs with EX. No
  single flight: one user's requests rarely overlap and a duplicate build costs one user's work.
* **Item-keyed** (`item_cache_get`): shared by every user, so a miss on a popular item is a stampede. The value
  is stored with its build time; while fresh it is served, once stale it is still served while exactly one
  caller (the winner of a SET NX PX lock in the value's slot) rebuilds it, and when it is missing one caller
  builds while the others wait briefly for its value.

Values are bytes (callers serialise, e.g. with orjson). Each cached value is one Redis key hash-tagged by its
entity (`personalization.redis_keys`), and every command or script touches one slot, so a Redis Cluster works.

Stored formats (the tests read them): a user value is `b"u1:" + version + b"\\n" + payload`; an item value is
`b"i1" + 16 ASCII digits (build start, epoch milliseconds) + payload`, and an invalidated item value has the
digits set to zero (stale for any `fresh_seconds`). Freshness is judged with the web machines' wall clocks (kept
close by NTP): a skew between machines only shifts the fresh window by as much.

Redis errors: a failed read is raised (the caller degrades as for any Redis outage, rather than every request
building behind a cache that is down); a failed write after a successful build is logged and the built value
returned.
"""

from __future__ import annotations

import functools
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import redis
from prometheus_client import Counter, Histogram

from personalization import redis_keys
from personalization.redis_client import ShaScript, get_control_redis, get_redis, script_pipeline_execute

logger = logging.getLogger(__name__)

# `stored` of the get functions when the caller has not read the key itself.
NOT_READ: Final = object()
USER_CACHE_MIN_TTL_SECONDS: Final = 60
USER_CACHE_MAX_TTL_SECONDS: Final = 300
USER_CACHE_DEFAULT_TTL_SECONDS: Final = 120
# A cold item cache's waiters give up after this long: longer than a normal build (a few pgvector milliseconds),
# short enough that a request degrades rather than hangs when the build is slow because the database is.
ITEM_CACHE_DEFAULT_WAIT_SECONDS: Final = 0.25
# The rebuild lock outlives any normal build; if its holder dies, another caller takes over after this long.
ITEM_CACHE_DEFAULT_LOCK_SECONDS: Final = 5.0
_FIRST_POLL_SECONDS: Final = 0.005
_MAX_POLL_SECONDS: Final = 0.05

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_VERSION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_USER_MAGIC: Final = b"u1:"
_ITEM_MAGIC: Final = b"i1"
_STAMP_DIGITS: Final = 16
_ITEM_HEADER: Final = len(_ITEM_MAGIC) + _STAMP_DIGITS

CACHE_REQUESTS = Counter(
    "cache_requests_total",
    "Cache reads by cache name and outcome: hit (fresh value), stale (stale value served while another caller "
    "rebuilds), miss (nothing stored, this caller built), rebuild (stale, this caller rebuilt), wait (nothing "
    "stored, this caller waited for another's build).",
    ["cache", "outcome"],
)
CACHE_ERRORS = Counter(
    "cache_errors_total",
    "Cache failures by cache name and kind: build (the build function raised), store (Redis refused the built "
    "value), wait_timeout (a cold item cache was still being built by another caller).",
    ["cache", "kind"],
)
CACHE_BUILD_SECONDS = Histogram(
    "cache_build_seconds",
    "Time spent in a cache's build function (successful or not).",
    ["cache"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


class Uncacheable(bytes):
    """A value a user-keyed build returns but that must not be stored (e.g. a candidate set missing a source
    that was late): the caller gets it, the next request builds again."""


class CacheWaitTimeout(Exception):
    """A cold item cache was still being built by another caller after `wait_seconds`. Serve a fallback: building
    it here too would pile onto whatever makes the build slow (typically the database)."""


# The item caches' scripts (`cache_*.lua`): the claim of a value or its rebuild lock, the store of a build, the
# release of the lock, the invalidation.
_claim_script = ShaScript.from_files(__file__, "cache_claim.lua")
_store_script = ShaScript.from_files(__file__, "cache_store.lua")
_release_script = ShaScript.from_files(__file__, "cache_release.lua")
_invalidate_script = ShaScript.from_files(__file__, "cache_invalidate.lua")
_FRESH: Final = 1
_LOCKED: Final = 2


def user_cache_get_or_build(
    *,
    user_key: str,
    name: str,
    version: str,
    build: Callable[[], bytes],
    ttl_seconds: int = USER_CACHE_DEFAULT_TTL_SECONDS,
    stored: bytes | object | None = NOT_READ,
    deferred: list[UserCacheWrite] | None = None,
) -> bytes:
    """The user's cached value for `name` at `version`, built and stored (TTL clamped to 60-300 s) when missing or
    of another version. One key per user and name: a new version replaces the old value instead of leaving it to
    expire. `stored`: the key's value as the caller already read it in its own pipeline (no second read).
    `deferred`: a value built is not stored but added there, for the caller to write in its next round trip
    (`user_cache_writes_queue`), or at the latest `user_cache_writes_flush`."""
    _check_entity(user_key)
    _check_name(name)
    if not _VERSION.fullmatch(version):
        raise ValueError(f"cache version must match {_VERSION.pattern}: {version!r}")
    client = get_redis()
    key = redis_keys.user_cache(user_key, name)
    hit = user_cache_peek(name=name, version=version, stored=_get(client, key) if stored is NOT_READ else stored)
    if hit is not None:
        return hit
    CACHE_REQUESTS.labels(cache=name, outcome="miss").inc()
    prefix = _USER_MAGIC + version.encode() + b"\n"
    payload = _timed_build(name, build)
    if isinstance(payload, Uncacheable):
        return bytes(payload)
    ttl = min(max(ttl_seconds, USER_CACHE_MIN_TTL_SECONDS), USER_CACHE_MAX_TTL_SECONDS)
    if deferred is not None:
        deferred.append(UserCacheWrite(name, key, prefix + payload, ttl))
        return payload
    try:
        client.set(key, prefix + payload, ex=ttl)
    except redis.RedisError:
        _store_failed(name, key)
    return payload


@dataclass(frozen=True)
class UserCacheWrite:
    """A user cache value built but not yet stored (`user_cache_get_or_build(deferred=...)`)."""

    name: str
    key: str
    value: bytes
    ttl_seconds: int


def user_cache_writes_queue(pipeline: redis.client.Pipeline, writes: list[UserCacheWrite]) -> int:
    """Queue these writes on the caller's pipeline, which owns them from then on (the list is emptied); returns
    how many replies they take."""
    for write in writes:
        pipeline.set(write.key, write.value, ex=write.ttl_seconds)
    count = len(writes)
    writes.clear()
    return count


def user_cache_writes_flush(writes: list[UserCacheWrite]) -> None:
    """Store the writes no pipeline took, in a round trip of their own (a failure is logged: a cache miss later)."""
    if not writes:
        return
    try:
        pipeline = get_redis().pipeline(transaction=False)
        user_cache_writes_queue(pipeline, list(writes))
        pipeline.execute()
    except redis.RedisError:
        _store_failed(writes[0].name, writes[0].key)
    writes.clear()


def user_cache_peek(*, name: str, version: str, stored: Any) -> bytes | None:
    """The payload of a user cache value the caller read itself (a GET of `redis_keys.user_cache` in its own
    pipeline) when it is of `version`, counted as a hit; None otherwise (then `user_cache_get_or_build`)."""
    prefix = _USER_MAGIC + version.encode() + b"\n"
    if not isinstance(stored, bytes) or not stored.startswith(prefix):
        return None
    CACHE_REQUESTS.labels(cache=name, outcome="hit").inc()
    return stored[len(prefix) :]


def user_cache_invalidate(*, user_key: str, name: str) -> bool:
    """Drop the user's value for `name` (whatever its version); True if there was one. Prefer a new `version`."""
    _check_entity(user_key)
    _check_name(name)
    return bool(get_redis().delete(redis_keys.user_cache(user_key, name)))


def user_caches_erase(*, user_key: str) -> int:
    """Drop every cached value of the user, whatever its name (an erased shopper); the number dropped. Control
    plane: a SCAN of the keyspace for the user's prefix."""
    _check_entity(user_key)
    client = get_control_redis()
    prefix = redis_keys.user_cache(user_key, "")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    # A name is one identifier: a longer user id that merely starts like this one is not matched.
    keys = [key for key in client.scan_iter(match=pattern, count=1000) if _NAME.fullmatch(key.decode()[len(prefix) :])]
    return int(client.delete(*keys)) if keys else 0


def item_cache_get(
    *,
    item_key: str,
    name: str,
    fresh_seconds: int,
    stale_seconds: int,
    build: Callable[[], bytes],
    wait_seconds: float = ITEM_CACHE_DEFAULT_WAIT_SECONDS,
    lock_seconds: float = ITEM_CACHE_DEFAULT_LOCK_SECONDS,
) -> bytes:
    """The item's cached value for `name`, stale-while-revalidate with a single build under concurrency.

    Fresh (built less than `fresh_seconds` ago): returned, one GET. Stale (kept `stale_seconds` longer): the caller
    that takes the rebuild lock rebuilds inline and returns the new value, every other caller returns the stale
    value at once; if the rebuild fails the stale value is returned and the lock released. Missing: the caller that
    takes the lock builds (its failure is raised); the others poll for its value for up to `wait_seconds`, taking
    over the build if the lock disappears without a value (the builder failed or died), and raise
    `CacheWaitTimeout` when the wait runs out.

    The rebuild runs inline rather than in a thread or a task: a sync gunicorn worker may be recycled after the
    response (losing the thread's work), a task queue adds a hop and cannot carry the `build` closure, and inline
    costs one request per stale period the build's latency while everyone else is served immediately.
    """
    _check_entity(item_key)
    _check_name(name)
    if fresh_seconds <= 0 or stale_seconds < 0:
        raise ValueError("fresh_seconds must be positive and stale_seconds not negative")
    client = get_redis()
    key = redis_keys.item_cache(item_key, name)
    lock = redis_keys.item_cache_lock(item_key, name)
    fresh_ms = fresh_seconds * 1000
    ttl_ms = (fresh_seconds + stale_seconds) * 1000
    lock_ms = max(1, round(lock_seconds * 1000))
    token = secrets.token_hex(16)

    fresh = item_cache_peek(name=name, fresh_seconds=fresh_seconds, stored=_get(client, key))
    if fresh is not None:
        return fresh

    deadline = time.monotonic() + wait_seconds
    pause = _FIRST_POLL_SECONDS
    waited = False
    while True:
        state, raw = _claim_script.call_named(
            client, value=key, lock=lock, token=token, lock_ms=lock_ms, fresh_after=_now_ms() - fresh_ms
        )
        current = _item_decode(raw)
        if state == _FRESH and current is not None:
            CACHE_REQUESTS.labels(cache=name, outcome="wait" if waited else "hit").inc()
            return current[1]
        if state == _LOCKED and current is None:
            CACHE_REQUESTS.labels(cache=name, outcome="miss").inc()
            return _item_build_and_store(client, name=name, key=key, lock=lock, token=token, ttl_ms=ttl_ms, build=build)
        if state == _LOCKED and current is not None:
            CACHE_REQUESTS.labels(cache=name, outcome="rebuild").inc()
            try:
                return _item_build_and_store(
                    client, name=name, key=key, lock=lock, token=token, ttl_ms=ttl_ms, build=build
                )
            except Exception:
                # The stale value beats an error page; the lock is already released, so the next caller retries.
                logger.warning("cache.rebuild_failed", extra={"cache": name, "item_key": item_key}, exc_info=True)
                return current[1]
        if current is not None:
            # Another caller is rebuilding: the stale value now. After a wait it is the build we waited for, stored
            # already stale because an invalidation overtook it: still the newest there is.
            CACHE_REQUESTS.labels(cache=name, outcome="wait" if waited else "stale").inc()
            return current[1]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            CACHE_REQUESTS.labels(cache=name, outcome="wait").inc()
            CACHE_ERRORS.labels(cache=name, kind="wait_timeout").inc()
            raise CacheWaitTimeout(f"{key} is being built by another caller (waited {wait_seconds} s)")
        waited = True
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, _MAX_POLL_SECONDS)


def item_cache_peek(*, name: str, fresh_seconds: int, stored: bytes | None) -> bytes | None:
    """The payload of an item cache value the caller read itself (a GET of `redis_keys.item_cache` in its own
    pipeline) when it is fresh, counted as a hit; None otherwise (then `item_cache_get`, which rebuilds or serves
    it stale under its lock)."""
    decoded = _item_decode(stored)
    if decoded is None or _now_ms() - decoded[0] >= fresh_seconds * 1000:
        return None
    CACHE_REQUESTS.labels(cache=name, outcome="hit").inc()
    return decoded[1]


def item_cache_identity(stored: bytes | None) -> bytes:
    """What tells an item cache value (a GET of `redis_keys.item_cache`) from another, for callers that key their
    own caches on it: its payload and whether it is marked stale, not when it was built (a rebuild to the same
    payload is the same value)."""
    decoded = _item_decode(stored)
    if decoded is None:
        return b""
    return (b"stale:" if decoded[0] == 0 else b"") + decoded[1]


def item_cache_invalidate(*, item_key: str, name: str) -> bool:
    """Mark the item's value for `name` stale (not deleted: readers keep getting it while one caller rebuilds);
    a build under way stores its result as stale too. True if there was a value."""
    _check_entity(item_key)
    _check_name(name)
    keys = [redis_keys.item_cache(item_key, name), redis_keys.item_cache_lock(item_key, name)]
    # Called by catalog writes and batch jobs (control plane), never by a recommendation: the longer timeouts.
    return bool(_invalidate_script.call_named(get_control_redis(), value=keys[0], lock=keys[1]))


def item_cache_invalidate_many(*, item_keys: list[str], name: str) -> None:
    """`item_cache_invalidate` of many items in one pipelined round trip (a catalog batch of 1,000)."""
    _check_name(name)
    if not item_keys:
        return
    for item_key in item_keys:
        _check_entity(item_key)
    client = get_control_redis()

    def queue(pipeline: redis.client.Pipeline) -> None:
        for item_key in item_keys:
            _invalidate_script.queue_named(
                client,
                pipeline,
                value=redis_keys.item_cache(item_key, name),
                lock=redis_keys.item_cache_lock(item_key, name),
            )

    # Sent again whole if Redis forgot the script (nothing of it ran then; invalidating twice changes nothing).
    script_pipeline_execute(client, queue, _invalidate_script)


def _item_build_and_store(
    client: redis.Redis, *, name: str, key: str, lock: str, token: str, ttl_ms: int, build: Callable[[], bytes]
) -> bytes:
    """Build while holding the lock, then store (fresh if still held). The lock is released whatever happens."""
    stamp = b"%0*d" % (_STAMP_DIGITS, _now_ms())  # the build's start: data read after it is at least this new
    try:
        payload = _timed_build(name, build)
    except BaseException:
        _release(client, name=name, lock=lock, token=token)
        raise
    try:
        _store_script.call_named(client, value=key, lock=lock, token=token, stamp=stamp, payload=payload, ttl_ms=ttl_ms)
    except redis.RedisError:
        _store_failed(name, key)
        _release(client, name=name, lock=lock, token=token)
    return payload


def _timed_build(name: str, build: Callable[[], bytes]) -> bytes:
    started = time.monotonic()
    try:
        payload = build()
    except BaseException:
        CACHE_ERRORS.labels(cache=name, kind="build").inc()
        raise
    finally:
        CACHE_BUILD_SECONDS.labels(cache=name).observe(time.monotonic() - started)
    if not isinstance(payload, bytes):
        raise TypeError(f"cache {name!r}: build must return bytes, not {type(payload).__name__}")
    return payload


def _release(client: redis.Redis, *, name: str, lock: str, token: str) -> None:
    try:
        _release_script.call_named(client, lock=lock, token=token)
    except redis.RedisError:
        # The lock expires on its own after lock_seconds.
        logger.warning("cache.lock_release_failed", extra={"cache": name, "key": lock}, exc_info=True)


def _store_failed(name: str, key: str) -> None:
    CACHE_ERRORS.labels(cache=name, kind="store").inc()
    logger.warning("cache.store_failed", extra={"cache": name, "key": key}, exc_info=True)


def _item_decode(stored: bytes | None) -> tuple[int, bytes] | None:
    """(build start in epoch ms, payload), or None for nothing or a value this code did not write."""
    if stored is None or not stored.startswith(_ITEM_MAGIC):
        return None
    stamp = stored[len(_ITEM_MAGIC) : _ITEM_HEADER]
    if len(stamp) != _STAMP_DIGITS or not stamp.isdigit():
        return None
    return int(stamp), stored[_ITEM_HEADER:]


def _get(client: redis.Redis, key: str) -> bytes | None:
    return cast("bytes | None", client.get(key))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.cache
def _check_name(name: str) -> None:
    # The name is a metric label: a small fixed set of identifiers, never built from request data.
    if not _NAME.fullmatch(name):
        raise ValueError(f"cache name must match {_NAME.pattern}: {name!r}")


def _check_entity(entity_key: str) -> None:
    # An empty hash tag ("{}") would hash the whole key, putting a value and its lock in different slots.
    if not entity_key:
        raise ValueError("cache entity key must not be empty")
