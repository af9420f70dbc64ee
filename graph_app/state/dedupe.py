"""Which event ids the online state applied in the last 48 h: the ingest script's dedupe (hot path, no ORM).

An event id is remembered as a 64-bit hash (blake2b), an integer member of a Redis set: sets of integers of at
most 512 members (the default `set-max-intset-entries`) are intsets, 8 bytes a member. Per partition, the ids are
kept in generations by arrival time (a UTC day each, `seen:{pN}:<day>.<level>:<shard>`); a generation's ids are
spread over 2^bits sets by other bits of the digest, so that each set holds about IDS_PER_SET. The bits follow
the event rate: a new generation starts with enough sets for the busier of the two before it, and when its sets
fill up faster than that, the ingest script adds a level (more sets) for the rest of the day; an id is looked up
in every level of the generations it checks and added to the newest level of the current one. The layout (each
generation's levels) is stored in the partition's layout hash; each process keeps the layouts it uses, and the
ingest script refuses a call made with a layout that is not the stored one ("stale") before writing anything.

A lookup checks the generations that overlap [arrival - 48 h - skew, arrival + skew] (at most 4): an id stays
known for at least the 48 h window (and at most 3 days), despite a clock skew of up to CLOCK_SKEW_SECONDS between
the processes and Redis. Members are compared exactly, so a new event is dropped only if its 64-bit hash equals
that of an id in one of the sets it is looked up in (the digest's other 64 bits chose them): usually under 1,000
ids, at most 8,192 (4 days x MAX_LEVELS levels x 512), so at most 4e-16 an event: at 10,000 events/s, once in
7,000 years at the very worst, once in about 80,000 years as a rule. (One 64-bit hash for the whole window, 2.6 G
ids at 10,000 events/s, would drop a new event about once a week: hence the sets chosen by independent bits.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

import redis

from personalization import redis_keys
from personalization.process_caches import process_cache
from personalization.redis_client import ShaScript, script_pipeline_execute

DEDUPE_WINDOW_SECONDS = 48 * 3600
DEDUPE_WINDOW = timedelta(seconds=DEDUPE_WINDOW_SECONDS)
GENERATION_SECONDS = 24 * 3600
CLOCK_SKEW_SECONDS = 300
SNAPSHOTS_KEPT = 4096
# The most generations an arrival checks: those overlapping [arrival - 48 h - skew, arrival + skew], 3 days but
# in the 5 minutes either side of midnight.
GENERATIONS_CHECKED = 4
# The mean size a set is sized for: half the default intset limit (512), so a day up to twice as busy as the one
# before still fits, and sets of a few hundred ids make each key's own overhead (about 70 bytes) small per id.
IDS_PER_SET = 256
MAX_SHARD_BITS = 22
# A generation grows levels at most this many times (each is one more lookup an event): past it, sets outgrow the
# intset encoding (correct, about 5x the memory).
MAX_LEVELS = 4
# A level's rate is measured over at least this long (a burst of a few seconds would ask for far too many sets).
RATE_MIN_SECONDS = 600
STALE = b"stale"


# The constants the Lua files use.
LUA_CONSTANTS = {"GENERATION_SECONDS": GENERATION_SECONDS, "RATE_MIN_SECONDS": RATE_MIN_SECONDS}
# Each generation's layout (`dedupe_layout.lua`), created for the generations not yet known. The ingest and apply
# scripts compose `dedupe.lua` (their dedupe functions).
layout_script = ShaScript.from_files(__file__, "dedupe_layout.lua", constants=LUA_CONSTANTS)


def event_digest(event_id: str) -> tuple[int, int]:
    """The id's member (a signed 64-bit integer, as intsets hold) and the independent bits that choose its set."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little", signed=True), int.from_bytes(digest[8:], "little")


@dataclass(frozen=True)
class Generations:
    """The generations an arrival time uses: `checked`, newest first (3, or 4 near midnight), and `current`,
    where a new id goes."""

    current: int
    checked: tuple[int, ...]
    arrival: float

    @property
    def expire_at(self) -> int:
        """When the current generation's sets may go: its last id is then older than the window and both skews."""
        return (self.current + 1) * GENERATION_SECONDS + DEDUPE_WINDOW_SECONDS + 2 * CLOCK_SKEW_SECONDS

    @property
    def current_end(self) -> int:
        return (self.current + 1) * GENERATION_SECONDS


def generations_at(arrival: float) -> Generations:
    newest = math.floor((arrival + CLOCK_SKEW_SECONDS) / GENERATION_SECONDS)
    oldest = math.floor((arrival - DEDUPE_WINDOW_SECONDS - CLOCK_SKEW_SECONDS) / GENERATION_SECONDS)
    return Generations(
        current=math.floor(arrival / GENERATION_SECONDS),
        checked=tuple(range(newest, oldest - 1, -1)),
        arrival=arrival,
    )


@dataclass(frozen=True)
class PartitionLayout:
    """One partition's layouts of the generations an arrival checks, as one script call uses them: its keys and
    the layouts it asks the script to check are made from the same snapshot."""

    partition: int
    generations: Generations
    levels: dict[int, str]  # generation -> "bits,bits..." of its levels

    @cached_property
    def _sets(self) -> list[tuple[str, int]]:
        """Each level's key prefix and shard mask: first the newest level of the current generation, then every
        other level of the generations checked."""
        sets: list[tuple[str, int]] = []
        for generation in self.generations.checked:
            levels = self.levels[generation].split(",")
            for level, bits in enumerate(levels):
                prefix = redis_keys.event_seen_prefix(self.partition, f"{generation}.{level}")
                if generation == self.generations.current and level == len(levels) - 1:
                    sets.insert(0, (prefix, (1 << int(bits)) - 1))
                else:
                    sets.append((prefix, (1 << int(bits)) - 1))
        return sets

    def keys(self, event_id: str) -> tuple[int, list[str]]:
        """The id's member and its sets (the first: where a new id goes)."""
        member, chooser = event_digest(event_id)
        return member, [prefix + str(chooser & mask) for prefix, mask in self._sets]

    def generation_args(self) -> list[str | int]:
        """What the scripts' dedupe_layout_current reads: the generations checked, then their layouts."""
        checked = self.generations.checked
        return [*checked, *(self.levels[generation] for generation in checked)]

    @property
    def current_levels(self) -> str:
        return self.levels[self.generations.current]


class Layouts:
    """The generations' layouts this process knows. A generation's layout changes only by a level added, which a
    call made with the old one learns from its "stale" reply; old generations are forgotten as days pass."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int], str] = {}
        # Snapshots made, reused while their layouts are the ones known (one a partition and arrival day, mostly).
        self._snapshots: dict[tuple[int, Generations], PartitionLayout] = {}

    def clear(self) -> None:
        self._known.clear()
        self._snapshots.clear()

    def missing(self, partition: int, generations: Generations) -> bool:
        return any((partition, generation) not in self._known for generation in generations.checked)

    def of(self, partition: int, generations: Generations) -> PartitionLayout:
        """A snapshot (fetched before: `fetch`)."""
        levels = {generation: self._known[(partition, generation)] for generation in generations.checked}
        day = Generations(current=generations.current, checked=generations.checked, arrival=0.0)
        snapshot = self._snapshots.get((partition, day))
        if snapshot is None or snapshot.levels != levels:
            if len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.clear()
            snapshot = PartitionLayout(partition, day, levels)
            self._snapshots[(partition, day)] = snapshot
        return snapshot

    def fetch(self, client: redis.Redis, needed: Iterable[tuple[int, Generations]]) -> None:
        """The layouts of these partitions' generations as stored, one round trip (creating the ones not yet
        known)."""
        wanted = list(needed)
        if not wanted:
            return
        now = max(generations.arrival for _partition, generations in wanted)
        needed_checked = sorted({(partition, generations.checked) for partition, generations in wanted})

        def queue(pipeline: redis.client.Pipeline) -> None:
            for partition, checked in needed_checked:
                layout_script.queue_named(
                    client,
                    pipeline,
                    layout=redis_keys.event_seen_layout(partition),
                    ids_per_set=IDS_PER_SET,
                    max_shard_bits=MAX_SHARD_BITS,
                    now=repr(now),
                    generations=checked,
                )

        # Sent again if Redis restarted or failed over and forgot the script (nothing of these calls ran then).
        replies = script_pipeline_execute(client, queue, layout_script)
        newest = max(checked[0] for _partition, checked in needed_checked)
        for (partition, checked), layouts in zip(needed_checked, replies, strict=True):
            for generation, levels in zip(checked, layouts, strict=True):
                self._known[(partition, generation)] = levels.decode() if isinstance(levels, bytes) else str(levels)
        # list(): other threads may add meanwhile. Generations this old are checked by no arrival of now.
        for known in [known for known in list(self._known) if known[1] < newest - 2 * GENERATIONS_CHECKED]:
            self._known.pop(known, None)


layouts = Layouts()


@process_cache("graph.dedupe_layouts")
def _layouts_reset() -> None:
    # The snapshots hold their key names: a switch of the Redis mode (the tests' cluster) changes the partition tags.
    layouts.clear()


def event_ids_seen(client: redis.Redis, events: Sequence[tuple[int, str]], arrival: float) -> list[bool]:
    """Whether each (partition, event id) was seen within the window before `arrival` (control plane: tests,
    benchmarks)."""
    generations = generations_at(arrival)
    layouts.fetch(client, [(partition, generations) for partition, _ in events])
    looked_up = []
    pipeline = client.pipeline(transaction=False)
    for partition, event_id in events:
        member, keys = layouts.of(partition, generations).keys(event_id)
        for key in keys:
            pipeline.sismember(key, str(member))
        looked_up.append(len(keys))
    replies = iter(pipeline.execute())
    return [sum(bool(next(replies)) for _ in range(count)) > 0 for count in looked_up]
