"""The user's affinity hash: its layout, the one decoder every reader uses, and the cap on the entities it keeps.

Written by the ingest and apply scripts (`signals_app.online_state.AFFINITY_LUA`), the identity merge and the
rebuild; read by the feature store, retrieval (favourite categories) and the bandit's context. One field an entity,
named by its code (`entity_code`: a NUL and 6 bytes of the key's SHA-1, 7 bytes where a key such as
"category:Home > Kitchen > Mugs" took 20 to 40: a million users' hashes are most of the online state), holding
packed doubles: its forward-decayed counter (against the hash's epoch) and, for a category only, the time of its
latest event (the one entity time a feature reads). The decoder names the entities again from the catalog's
code -> key hash (`catalog:entity-names`, written with the catalog's entities). Meta fields start with "#", which no
entity key or code can, and hold a packed double: "#e" the decay epoch, "#l" the time of the latest event that
updated the hash, "#r" the time of the user's latest item of interest (which restarts the recent items after a long
gap), and "#c" (empty) marks the coded layout. Older layouts read the same and are converted on their user's next
event: entity keys as field names, and before that "f:<key>" counters and "r:<key>" times as text with "_epoch"
and "_last".

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

logger = logging.getLogger(__name__)

EPOCH_FIELD = b"#e"
LAST_FIELD = b"#l"
RECENT_LAST_FIELD = b"#r"
CODED_FIELD = b"#c"
ENTITY_CODE_MARK = 0  # an entity code's first byte (no entity key starts with it: kinds are slugs)
ENTITY_CODE_BYTES = 7
CATEGORY_PREFIX = b"category:"
COUNTER = struct.Struct("<d")
COUNTER_AND_TIME = struct.Struct("<dd")
# The first layout's fields (read during the transition; the scripts convert a hash on its user's next event).
_LEGACY_EPOCH, _LEGACY_LAST = b"_epoch", b"_last"


def entities_kept() -> int:
    return int(settings.SIGNALS_AFFINITY_ENTITIES_KEPT)


def entity_code(key: str | bytes) -> bytes:
    """The field naming an entity key in the hash; the scripts' `affinity_field` computes the same. 48 bits: two of
    a hundred thousand entities share one with a chance of about 1 in 50,000."""
    raw = key.encode() if isinstance(key, str) else key
    return bytes([ENTITY_CODE_MARK]) + hashlib.sha1(raw).digest()[: ENTITY_CODE_BYTES - 1]


def is_entity_code(name: bytes) -> bool:
    return len(name) == ENTITY_CODE_BYTES and name[0] == ENTITY_CODE_MARK


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
            learnt = entity_names_learn(_catalog_entity_keys())
            for start in range(0, len(learnt), 10_000):
                chunk = dict(list(learnt.items())[start : start + 10_000])
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
            if name.startswith(CATEGORY_PREFIX) == categories and not is_entity_code(name)  # (a code left unnamed)
        ]
        chosen.sort(reverse=True)
        return [name for _, name in chosen[:count]]


EMPTY = UserAffinity()


def affinity_decode(raw: Mapping[bytes, bytes] | None) -> UserAffinity:
    """The hash as HGETALL returned it (any layout), its entities named by their keys. A code nobody named (its
    entity's items gone from the catalog's names) keeps its code as a name: merged as it is, matched by nothing."""
    if not raw:
        return EMPTY
    if _LEGACY_EPOCH in raw or _LEGACY_LAST in raw:
        return _legacy_decode(raw)
    unnamed = [name for name in raw if is_entity_code(name) and name not in _entity_names]
    if unnamed:
        _entity_names_resolve(unnamed)
    names = _entity_names
    counters: dict[bytes, float] = {}
    times: dict[bytes, float] = {}
    epoch = last = recent_last = None
    for name, value in raw.items():
        size = len(value)
        if name[0] == 35:  # "#": a meta field
            if size == 8:
                if name == EPOCH_FIELD:
                    epoch = COUNTER.unpack(value)[0]
                elif name == LAST_FIELD:
                    last = COUNTER.unpack(value)[0]
                elif name == RECENT_LAST_FIELD:
                    recent_last = COUNTER.unpack(value)[0]
            continue
        if name[0] == ENTITY_CODE_MARK:
            name = names.get(name, name)
        # A key and its code both present (a hash converted while another writer wrote the old way) add up: every
        # counter is against the same epoch.
        if size == 8:
            counters[name] = counters.get(name, 0.0) + COUNTER.unpack(value)[0]
        elif size == 16:
            counter, seen = COUNTER_AND_TIME.unpack(value)
            counters[name] = counters.get(name, 0.0) + counter
            if seen != -math.inf and seen > times.get(name, -math.inf):  # -inf: a converted category without time
                times[name] = seen
    return UserAffinity(epoch, last, counters, times, recent_last)


def recent_last_of(raw: Mapping[bytes, bytes] | None) -> float | None:
    """The time of the user's latest item of interest ("#r") in the hash as HGETALL returned it, without decoding
    the rest."""
    packed = raw.get(RECENT_LAST_FIELD) if raw else None
    return COUNTER.unpack(packed)[0] if packed is not None and len(packed) == 8 else None


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
    fields: dict[bytes, bytes] = {CODED_FIELD: b""}
    if epoch is not None and last is not None:
        fields[EPOCH_FIELD], fields[LAST_FIELD] = COUNTER.pack(epoch), COUNTER.pack(last)
    if recent_last is not None:
        fields[RECENT_LAST_FIELD] = COUNTER.pack(recent_last)
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
