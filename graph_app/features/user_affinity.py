"""The user's affinity hash: its layout, the one decoder every reader uses, and the cap on the entities it keeps.

Written by the ingest and apply scripts (`signals_app.online_state.AFFINITY_LUA`), the identity merge and the
rebuild; read by the feature store, retrieval (favourite categories) and the bandit's context. One field an entity,
named by its entity key ("category:mugs", "brand:acme"), holding packed doubles: its forward-decayed counter (against
the hash's epoch) and, for a category only, the time of its latest event (the one entity time a feature reads).
Meta fields start with "#", which no entity key can (kinds are slugs), and hold a packed double too: "#e" the decay
epoch, "#l" the time of the latest event that updated the hash. A hash still in the first layout ("f:<key>" counters
and "r:<key>" times as text, "_epoch", "_last") reads the same; the scripts convert it on its user's next event.

At most AFFINITY_ENTITIES_KEPT entities (setting SIGNALS_AFFINITY_ENTITIES_KEPT): past it the weakest by counter
go (`weakest_dropped`), so that a heavy user's hash stays small and below Redis 7's hash-max-listpack-entries (128).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from django.conf import settings

from graph_app.features.definitions import AFFINITY_HALF_LIFE_SECONDS, AFFINITY_TTL_SECONDS

EPOCH_FIELD = b"#e"
LAST_FIELD = b"#l"
CATEGORY_PREFIX = b"category:"
COUNTER = struct.Struct("<d")
COUNTER_AND_TIME = struct.Struct("<dd")
# The first layout's fields (read during the transition; the scripts convert a hash on its user's next event).
_LEGACY_EPOCH, _LEGACY_LAST = b"_epoch", b"_last"


def entities_kept() -> int:
    return int(settings.SIGNALS_AFFINITY_ENTITIES_KEPT)


@dataclass(frozen=True)
class UserAffinity:
    """One user's affinity hash, decoded. `counters`: entity key -> forward-decayed counter (against `epoch`: one
    factor for all, so the raw values rank the entities); `category_times`: category key -> its latest event."""

    epoch: float | None = None
    last: float | None = None
    counters: dict[bytes, float] = field(default_factory=dict)
    category_times: dict[bytes, float] = field(default_factory=dict)

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
            if name.startswith(CATEGORY_PREFIX) == categories
        ]
        chosen.sort(reverse=True)
        return [name for _, name in chosen[:count]]


EMPTY = UserAffinity()


def affinity_decode(raw: Mapping[bytes, bytes] | None) -> UserAffinity:
    """The hash as HGETALL returned it (either layout)."""
    if not raw:
        return EMPTY
    if _LEGACY_EPOCH in raw or _LEGACY_LAST in raw:
        return _legacy_decode(raw)
    counters: dict[bytes, float] = {}
    times: dict[bytes, float] = {}
    epoch = last = None
    for name, value in raw.items():
        size = len(value)
        if name[0] == 35:  # "#": a meta field
            if name == EPOCH_FIELD and size == 8:
                epoch = COUNTER.unpack(value)[0]
            elif name == LAST_FIELD and size == 8:
                last = COUNTER.unpack(value)[0]
        elif size == 8:
            counters[name] = COUNTER.unpack(value)[0]
        elif size == 16:
            counters[name], seen = COUNTER_AND_TIME.unpack(value)
            if seen != -math.inf:  # a category converted from the first layout without its time
                times[name] = seen
    return UserAffinity(epoch, last, counters, times)


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
    *, epoch: float, last: float, counters: Mapping[str, float], times: Mapping[str, float]
) -> dict[str, bytes]:
    """The hash's fields for these counters (against `epoch`) and entity times (only categories' are kept)."""
    fields: dict[str, bytes] = {EPOCH_FIELD.decode(): COUNTER.pack(epoch), LAST_FIELD.decode(): COUNTER.pack(last)}
    for key, value in counters.items():
        if key.startswith("category:"):
            fields[key] = COUNTER_AND_TIME.pack(value, times.get(key, -math.inf))
        else:
            fields[key] = COUNTER.pack(value)
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
