"""The user's affinity hash: its layout, the one decoder every reader uses, and the cap on the entities it keeps.

Written by the ingest and apply scripts (`graph_app/state/affinity.lua`), the identity merge and the
rebuild; read by the feature store, retrieval (favourite categories) and the bandit's context. A million users'
hashes are most of the online state, so the layout is compact:
- one field an entity, named by its code (`entity_code`: 6 bytes of the key's SHA-1, where a key such as
  "category:Home > Kitchen > Mugs" takes 20 to 40), holding its forward-decayed counter (against the hash's epoch)
  as a float (7 significant digits, far more than a ranking feature needs) and, for a category only, the time of
  its latest event (a double: the one entity time a feature reads);
- "#m": the decay epoch, the time of the latest event that updated the counters and the time of the user's latest
  item of interest (which restarts the recent items after a long gap), three doubles, NaN for one not known.
The decoder names the entities again from the catalog's code -> key hash (`catalog:entity-names`, written with the
catalog's entities), else from the catalog's tables. The layouts before read the same and are converted on their
user's next event: fields named by entity key holding doubles with "#e" and "#l" meta fields (and the latest item
of interest in a key of its own), and before that "f:<key>" counters and "r:<key>" times as text.

At most AFFINITY_ENTITIES_KEPT entities (setting SIGNALS_AFFINITY_ENTITIES_KEPT): past it the weakest by counter
go (`weakest_dropped`), so that a heavy user's hash stays small and below Redis 7's hash-max-listpack-entries (128).
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from django.conf import settings

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS, AFFINITY_TTL_SECONDS
from personalization.process_caches import process_cache

logger = logging.getLogger(__name__)

META_FIELD = b"#m"
META = struct.Struct("<ddd")  # epoch, latest event, latest item of interest
ENTITY_CODE_BYTES = 6
# Counters are against the epoch, which moves to the latest event past this many half-lives: a float's range
# (2^128) keeps room for 2^28 of weight.
AFFINITY_REBASE_AFTER_HALF_LIVES = 100
CATEGORY_PREFIX = b"category:"
COUNTER = struct.Struct("<f")
COUNTER_AND_TIME = struct.Struct("<fd")
# An entity code the decoder could not name is kept under this mark and its code (7 bytes: no entity key starts
# with a NUL), so that the identity merge carries it and no reader mistakes it for a key.
UNNAMED_MARK = b"\x00"
# The layouts before (read until the scripts convert a hash on its user's next event).
_OLD_EPOCH, _OLD_LAST, _OLD_RECENT_LAST = b"#e", b"#l", b"#r"
_OLD_COUNTER, _OLD_COUNTER_AND_TIME = struct.Struct("<d"), struct.Struct("<dd")
_LEGACY_EPOCH, _LEGACY_LAST = b"_epoch", b"_last"


def as_float32(value: float) -> float:
    """`value` as the hash stores a counter (the rebuild rounds as the scripts do, event by event)."""
    return float(COUNTER.unpack(COUNTER.pack(value))[0])


def entities_kept() -> int:
    return int(settings.SIGNALS_AFFINITY_ENTITIES_KEPT)


def entity_code(key: str | bytes) -> bytes:
    """The field naming an entity key in the hash; the scripts' `affinity_field` computes the same. 48 bits: two of
    a hundred thousand entities share one with a chance of about 1 in 50,000."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha1(raw).digest()[:ENTITY_CODE_BYTES]


def is_unnamed(name: bytes) -> bool:
    """A decoded entity that stayed a code (see UNNAMED_MARK)."""
    return len(name) == ENTITY_CODE_BYTES + 1 and name[:1] == UNNAMED_MARK


# Entity codes this process has named: a code is a function of its key, so an entry never goes stale.
_entity_names: dict[bytes, bytes] = {}


def entity_names_learn(keys: list[str] | list[bytes]) -> dict[bytes, bytes]:
    """code -> key of these entity keys, remembered by this process; what the catalog writes to its names hash."""
    learnt = {}
    for key in keys:
        raw = key.encode() if isinstance(key, str) else key
        learnt[entity_code(raw)] = raw
    _entity_names.update(learnt)
    return learnt


# A code Redis cannot name (a store whose catalog was published before codes) is looked for in the catalog's tables
# at most this often per process.
NAMES_FROM_CATALOG_SECONDS = 600.0
_names_from_catalog_at = -NAMES_FROM_CATALOG_SECONDS


@process_cache("graph.entity_names")
def _entity_names_forget() -> None:
    global _names_from_catalog_at
    _entity_names.clear()
    _names_from_catalog_at = -NAMES_FROM_CATALOG_SECONDS


def _entity_names_resolve(codes: list[bytes]) -> None:
    """Name codes this process has not named yet: from the catalog's names hash (an item's entities are published
    before any event about it can count them), else from the catalog's tables, which then fill the hash."""
    global _names_from_catalog_at
    from redis.exceptions import RedisError

    from personalization import redis_keys
    from personalization.redis_client import get_redis

    try:
        names: list[bytes | None] = get_redis().hmget(redis_keys.CATALOG_ENTITY_NAMES, codes)  # type: ignore[assignment]
        _entity_names.update({code: name for code, name in zip(codes, names, strict=True) if name is not None})
        now = time.monotonic()
        unnamed = any(code not in _entity_names for code in codes)
        if unnamed and now - _names_from_catalog_at >= NAMES_FROM_CATALOG_SECONDS:
            _names_from_catalog_at = now
            learnt = list(entity_names_learn(_catalog_entity_keys()).items())
            for start in range(0, len(learnt), 10_000):
                chunk = dict(learnt[start : start + 10_000])
                get_redis().hset(redis_keys.CATALOG_ENTITY_NAMES, mapping=chunk)  # type: ignore[arg-type]
    except RedisError as error:
        logger.warning("graph.entity_names_unavailable", extra={"error": str(error)})


def _catalog_entity_keys() -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT kind || ':' || external_id FROM graph_app_entity "
            "UNION SELECT DISTINCT 'category:' || category FROM graph_app_item WHERE category <> ''"
        )
        return [row[0].replace("|", "/") for row in cursor.fetchall()]


@dataclass(frozen=True)
class UserAffinity:
    """One user's affinity hash, decoded. `counters`: entity key -> forward-decayed counter (against `epoch`: one
    factor for all, so the raw values rank the entities); `category_times`: category key -> its latest event."""

    epoch: float | None = None
    last: float | None = None
    counters: dict[bytes, float] = field(default_factory=dict)
    category_times: dict[bytes, float] = field(default_factory=dict)
    recent_last: float | None = None  # the time of the user's latest item of interest

    def valid(self, now: float) -> bool:
        """Within its TTL (a new user, or one whose state is older than the TTL: missing)."""
        return self.last is not None and self.last + AFFINITY_TTL_SECONDS > now

    def factor(self, now: float) -> float:
        """What turns a counter into its decayed value at `now`."""
        epoch = now if self.epoch is None else self.epoch
        return float(2.0 ** (-(now - epoch) / AFFINITY_HALF_LIFE_SECONDS))

    def strongest(self, *, categories: bool, count: int) -> list[str]:
        """The `count` strongest categories (or other entities), as names without the "category:" prefix for
        categories; ties: the greater name first."""
        chosen = [
            (value, name[len(CATEGORY_PREFIX) :].decode() if categories else name.decode())
            for name, value in self.counters.items()
            if name.startswith(CATEGORY_PREFIX) == categories and not is_unnamed(name)
        ]
        chosen.sort(reverse=True)
        return [name for _, name in chosen[:count]]


EMPTY = UserAffinity()


def affinity_decode(raw: Mapping[bytes, bytes] | None) -> UserAffinity:
    """The hash as HGETALL returned it (any layout), its entities named by their keys."""
    if not raw:
        return EMPTY
    if _LEGACY_EPOCH in raw or _LEGACY_LAST in raw:
        return _legacy_decode(raw)
    if META_FIELD not in raw and (_OLD_EPOCH in raw or _OLD_RECENT_LAST in raw):
        return _old_decode(raw)
    unnamed = [name for name in raw if len(name) == ENTITY_CODE_BYTES and name not in _entity_names]
    if unnamed:
        _entity_names_resolve(unnamed)
    names = _entity_names
    counters: dict[bytes, float] = {}
    times: dict[bytes, float] = {}
    epoch = last = recent_last = None
    for name, value in raw.items():
        size = len(value)
        if name == META_FIELD:
            if size == META.size:
                epoch, last, recent_last = (None if math.isnan(moment) else moment for moment in META.unpack(value))
            continue
        key = names.get(name) or UNNAMED_MARK + name
        if size == COUNTER.size:
            counters[key] = COUNTER.unpack(value)[0]
        elif size == COUNTER_AND_TIME.size:
            counters[key], seen = COUNTER_AND_TIME.unpack(value)
            if seen != -math.inf:  # a category converted from the first layout without its time
                times[key] = seen
    return UserAffinity(epoch, last, counters, times, recent_last)


def recent_last_of(raw: Mapping[bytes, bytes] | None) -> float | None:
    """The time of the user's latest item of interest in the hash as HGETALL returned it (this layout or the one
    before), without decoding the rest."""
    if not raw:
        return None
    packed = raw.get(META_FIELD)
    if packed is not None and len(packed) == META.size:
        moment = META.unpack(packed)[2]
        return None if math.isnan(moment) else moment
    packed = raw.get(_OLD_RECENT_LAST)
    return _OLD_COUNTER.unpack(packed)[0] if packed is not None and len(packed) == 8 else None


def _old_decode(raw: Mapping[bytes, bytes]) -> UserAffinity:
    """The layout before: fields named by entity key (or a NUL and a 6-byte code), doubles, "#e", "#l", "#r"."""
    coded = [name[1:] for name in raw if len(name) == ENTITY_CODE_BYTES + 1 and name[:1] == UNNAMED_MARK]
    unnamed = [code for code in coded if code not in _entity_names]
    if unnamed:
        _entity_names_resolve(unnamed)
    counters: dict[bytes, float] = {}
    times: dict[bytes, float] = {}
    meta: dict[bytes, float] = {}
    for name, value in raw.items():
        size = len(value)
        if name[:1] == b"#":
            if size == 8:
                meta[name] = _OLD_COUNTER.unpack(value)[0]
            continue
        if name[:1] == UNNAMED_MARK:
            name = _entity_names.get(name[1:], name)
        if size == 8:
            counters[name] = _OLD_COUNTER.unpack(value)[0]
        elif size == 16:
            counters[name], seen = _OLD_COUNTER_AND_TIME.unpack(value)
            if seen != -math.inf:
                times[name] = seen
    return UserAffinity(meta.get(_OLD_EPOCH), meta.get(_OLD_LAST), counters, times, meta.get(_OLD_RECENT_LAST))


def _legacy_decode(raw: Mapping[bytes, bytes]) -> UserAffinity:
    counters = {name[2:]: float(value) for name, value in raw.items() if name.startswith(b"f:")}
    times = {
        name[2:]: float(value)
        for name, value in raw.items()
        if name.startswith(b"r:" + CATEGORY_PREFIX) and name[2:] in counters
    }
    epoch, last = raw.get(_LEGACY_EPOCH), raw.get(_LEGACY_LAST)
    return UserAffinity(None if epoch is None else float(epoch), None if last is None else float(last), counters, times)


def affinity_encode(
    *,
    epoch: float | None,
    last: float | None,
    counters: Mapping[str, float],
    times: Mapping[str, float],
    recent_last: float | None = None,
) -> dict[bytes, bytes]:
    """The hash's fields for these counters (against `epoch`, entities by key), entity times (only categories' are
    kept) and the latest item of interest's time."""
    nan = math.nan
    fields: dict[bytes, bytes] = {
        META_FIELD: META.pack(nan if epoch is None else epoch, nan if last is None else last,
                              nan if recent_last is None else recent_last),
    }  # fmt: skip
    for key, value in counters.items():
        if key.startswith("category:"):
            fields[entity_code(key)] = COUNTER_AND_TIME.pack(value, times.get(key, -math.inf))
        else:
            fields[entity_code(key)] = COUNTER.pack(value)
    return fields


def weakest_dropped(counters: MutableMapping[str, float], kept: int) -> list[str]:
    """Past `kept` entities, every entity at the weakest counter goes, again until at most `kept` are left (all the
    tied ones together: the same outcome whatever the order, as the scripts apply it). Returns the dropped keys."""
    dropped: list[str] = []
    while len(counters) > kept:
        weakest = min(counters.values())
        tied = [key for key, value in counters.items() if value == weakest]
        for key in tied:
            del counters[key]
        dropped += tied
    return dropped
