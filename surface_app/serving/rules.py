"""Business rules after the model, from an in-process snapshot (hot path: no database read per request).

The snapshot (placements, rules, caps) is compiled from PostgreSQL by `surface_app.rules_compile` and rebuilt
when the configuration's version in Redis changes (every request reads it in the round trip it already makes);
a rebuild runs in a background thread while requests go on with the previous snapshot, so a change reaches every
serving process within a request or two, without a restart.

Order of application (and how conflicts resolve), for one request:
1. Filters remove items: block lists, filter rules, already purchased (when the placement says so), items in a
   cool-down after a hide or skip, items over a frequency cap. A removed item never comes back.
2. Boosts and buries re-order what is left: the model's order becomes a base score (n - rank) / n, multiplied by
   each matching boost's factor and divided by each matching bury's; several rules multiply. Ties keep the
   model's order.
3. Diversity: walking the list in order, an item whose category (or brand) already has the placement's maximum is
   moved after the others (it fills the shelf only if nothing else can).
4. Pins put their item at their slot (1 is the first). Two pins on one slot: the higher priority wins (then the
   most recently changed rule); the other takes the next free slot. A pinned item must pass the filters, but not
   the diversity limits, nor the item, category and entity caps unless its pin opts in (`caps_apply`): those
   count its impressions, for its other appearances, without removing it (campaign and placement caps and the
   cool-down still apply: a campaign cap exists to cap pins).
5. The first `size` items are the slate; frequency caps are then enforced atomically in Redis as the impressions
   are recorded (an item refused there is replaced by the next one).
Every rule only applies inside its validity window and to users its audience matches (conditions on traits).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from personalization.candidates import Candidate
from personalization.process_caches import process_cache
from surface_app.serving.caps import CapSpec
from surface_app.serving.experiments import RunningExperiment

logger = logging.getLogger(__name__)

OPERATORS = ("eq", "ne", "in", "lt", "lte", "gt", "gte", "contains")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def holds(self, facts: Mapping[str, Any]) -> bool:
        actual = facts.get(self.field)
        try:
            if self.op == "eq":
                return bool(actual == self.value)
            if self.op == "ne":
                return bool(actual != self.value)
            if self.op == "in":
                return actual in self.value
            if self.op == "contains":
                return actual is not None and str(self.value).lower() in str(actual).lower()
            if actual is None:
                return False
            if self.op == "lt":
                return bool(actual < self.value)
            if self.op == "lte":
                return bool(actual <= self.value)
            if self.op == "gt":
                return bool(actual > self.value)
            if self.op == "gte":
                return bool(actual >= self.value)
        except TypeError:
            return False
        return False


@dataclass(frozen=True)
class CompiledRule:
    name: str
    kind: str
    priority: int
    placement: str | None
    valid_from: float | None
    valid_until: float | None
    audience: tuple[Condition, ...]
    # The catalog items the rule's condition matches, computed when the snapshot was built (None: every item).
    matches: frozenset[str] | None
    factor: float
    item_ids: tuple[str, ...]
    slot: int | None
    campaign: str
    # Pin: item, category and entity caps may remove its item (off: they count it but never remove it).
    caps_apply: bool = False

    def active(self, now: float, traits: Mapping[str, Any]) -> bool:
        if self.valid_from is not None and now < self.valid_from:
            return False
        if self.valid_until is not None and now >= self.valid_until:
            return False
        return all(condition.holds(traits) for condition in self.audience)

    def touches(self, item_id: str) -> bool:
        return self.matches is None or item_id in self.matches

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class PlacementConfig:
    name: str
    context: str = "user"
    size: int = 10
    sources: tuple[str, ...] = ()
    scorer: str = "auto"
    fallbacks: tuple[str, ...] = ("popular", "session", "last_slate", "default_list")
    default_items: tuple[str, ...] = ()
    deadline_ms: int = 60
    max_per_category: int | None = None
    max_per_brand: int | None = None
    exclude_purchased: bool = True
    caps: tuple[CapSpec, ...] = ()
    cooldown_seconds: int = 0

    @property
    def cap_specs(self) -> tuple[CapSpec, ...]:
        """What the read side checks: the caps, plus the cool-down as a spec (one tuple per config, so the caps
        module's per-list cache holds)."""
        return _cap_specs(self.caps, self.cooldown_seconds)


_specs_cache: dict[tuple[tuple[CapSpec, ...], int], tuple[CapSpec, ...]] = {}


def _cap_specs(caps: tuple[CapSpec, ...], cooldown_seconds: int) -> tuple[CapSpec, ...]:
    key = (caps, cooldown_seconds)
    specs = _specs_cache.get(key)
    if specs is None:
        cooldown = (CapSpec("cooldown", 1, cooldown_seconds, "cooldown"),) if cooldown_seconds else ()
        specs = _specs_cache[key] = (*caps, *cooldown)
        if len(_specs_cache) > 1000:
            _specs_cache.clear()
    return specs


@process_cache("surface.cap_specs")
def _specs_forget() -> None:
    _specs_cache.clear()


@dataclass(frozen=True)
class RulesSnapshot:
    version: bytes
    placements: Mapping[str, PlacementConfig]
    rules: tuple[CompiledRule, ...]  # by priority, highest first
    # Pinned items that exist and are in stock (a pin of anything else is skipped).
    pinnable: frozenset[str] = frozenset()
    global_caps: tuple[CapSpec, ...] = ()
    global_cooldown_seconds: int = 0
    # How long cap counts are kept: the longest window of any cap of any placement.
    caps_retention_seconds: int = 0
    # Placement name -> its running experiment (`surface_app.serving.experiments`).
    experiments: Mapping[str, RunningExperiment] = field(default_factory=dict)

    def placement(self, name: str) -> PlacementConfig:
        known = self.placements.get(name)
        if known is not None:
            return known
        # An unknown placement still serves, with the defaults and the rules and caps for every placement.
        return PlacementConfig(name=name, caps=self.global_caps, cooldown_seconds=self.global_cooldown_seconds)

    def rules_for(self, placement: str) -> list[CompiledRule]:
        return [rule for rule in self.rules if rule.placement in (None, placement)]


EMPTY = RulesSnapshot(version=b"", placements={}, rules=())


def rules_apply(
    *,
    items: Sequence[Candidate],
    rules: Sequence[CompiledRule],
    config: PlacementConfig,
    traits: Mapping[str, Any],
    now: float,
    blocked: Callable[[Candidate], str | None],
    pinned_facts: Callable[[str], Candidate | None],
    size: int,
    explain: dict[str, str] | None = None,
) -> tuple[list[Candidate], list[Candidate], dict[str, int]]:
    """(the ordered slate candidates, at least `size` when possible; the backfill after them; what each filter
    removed, by reason). `blocked` says why an item may not be shown (purchased, cool-down, cap) or None;
    `pinned_facts` gives a pinned item that Score did not return; `explain`, when given, receives item id -> the
    reason each removed item was removed."""
    active = [rule for rule in rules if rule.active(now, traits)]
    removed: dict[str, int] = {}
    refused = refusal_check(active=active, blocked=blocked)

    def eligible(item: Candidate) -> bool:
        reason = refused(item)
        if reason is not None:
            removed[reason] = removed.get(reason, 0) + 1
            if explain is not None:
                explain[item.item_id] = reason
            return False
        return True

    kept = [item for item in items if eligible(item)]

    # 2. Boosts and buries on a rank-based score, so that the model's order holds where no rule applies.
    weights = [rule for rule in active if rule.kind in ("boost", "bury")]
    count = len(kept)
    adjusted: list[tuple[float, int, Candidate]] = []
    for rank, item in enumerate(kept):
        value = (count - rank) / count
        for rule in weights:
            if rule.touches(item.item_id) and rule.factor > 0:
                value = value * rule.factor if rule.kind == "boost" else value / rule.factor
                item.rules = [*item.rules, rule.label]
        adjusted.append((value, rank, item))
    adjusted.sort(key=lambda entry: (-entry[0], entry[1]))
    ordered = [item for _, _, item in adjusted]

    # 3. Diversity: over-represented categories / brands move behind the rest.
    ordered, overflow = _diversify(ordered, config)

    # 4. Pins.
    pins = [rule for rule in active if rule.kind == "pin" and rule.item_ids and rule.slot]
    ordered, overflow = _pin(ordered, overflow, pins, pinned_facts, eligible, size)
    return ordered, overflow, removed


def refusal_check(
    *, active: Sequence[CompiledRule], blocked: Callable[[Candidate], str | None]
) -> Callable[[Candidate], str | None]:
    """Why an item may not be shown at all (a block list, a filter rule, then `blocked`: purchased, cool-down,
    cap), or None. `active`: the rules active for this request. The fallbacks' items pass the same check: a
    blocked item must not come back through the popular list."""
    blocked_ids = {item_id for rule in active if rule.kind == "block" for item_id in rule.item_ids}
    filters = [rule for rule in active if rule.kind == "filter"]

    def refused(item: Candidate) -> str | None:
        if item.item_id in blocked_ids:
            return "block"
        hit = next((rule for rule in filters if rule.touches(item.item_id)), None)
        return hit.label if hit is not None else blocked(item)

    return refused


def pins_exempt_from_caps(rules: Sequence[CompiledRule], now: float, traits: Mapping[str, Any]) -> frozenset[str]:
    """The items that active pins, without `caps_apply`, place: item, category and entity caps do not remove them.
    The first pin of an item (by priority) decides, as it is the one that places it."""
    deciding: dict[str, CompiledRule] = {}
    for rule in rules:
        if rule.kind == "pin" and rule.item_ids and rule.slot and rule.active(now, traits):
            deciding.setdefault(rule.item_ids[0], rule)
    return frozenset(item_id for item_id, rule in deciding.items() if not rule.caps_apply)


def _diversify(items: list[Candidate], config: PlacementConfig) -> tuple[list[Candidate], list[Candidate]]:
    if config.max_per_category is None and config.max_per_brand is None:
        return items, []
    by_category: dict[str, int] = {}
    by_brand: dict[str, int] = {}
    diverse: list[Candidate] = []
    overflow: list[Candidate] = []
    for item in items:
        too_many = (
            config.max_per_category is not None
            and item.category
            and by_category.get(item.category, 0) >= config.max_per_category
        ) or (config.max_per_brand is not None and item.brand and by_brand.get(item.brand, 0) >= config.max_per_brand)
        if too_many:
            item.rules = [*item.rules, "diversity"]
            overflow.append(item)
            continue
        diverse.append(item)
        if item.category:
            by_category[item.category] = by_category.get(item.category, 0) + 1
        if item.brand:
            by_brand[item.brand] = by_brand.get(item.brand, 0) + 1
    return diverse, overflow


def _pin(
    ordered: list[Candidate],
    overflow: list[Candidate],
    pins: list[CompiledRule],
    pinned_facts: Callable[[str], Candidate | None],
    eligible: Callable[[Candidate], bool],
    size: int,
) -> tuple[list[Candidate], list[Candidate]]:
    if not pins:
        return ordered, overflow
    by_id = {item.item_id: item for item in [*ordered, *overflow]}
    slots: dict[int, Candidate] = {}
    for rule in pins:  # highest priority first: it takes its slot, a later pin the next free one
        item_id = rule.item_ids[0]
        item = by_id.get(item_id) or pinned_facts(item_id)
        if item is None or any(placed.item_id == item_id for placed in slots.values()):
            continue
        if item_id not in by_id and not eligible(item):
            continue
        slot = (rule.slot or 1) - 1
        while slot in slots:
            slot += 1
        item.rules = [*item.rules, rule.label]
        item.pinned_slot = slot
        item.campaign = rule.campaign
        item.explanation = f"Pinned by campaign {rule.campaign or rule.name}"
        slots[slot] = item
    pinned_ids = {item.item_id for item in slots.values()}
    rest = iter([item for item in ordered if item.item_id not in pinned_ids])
    result: list[Candidate] = []
    for position in range(max(size, max(slots, default=-1) + 1)):
        if position in slots:
            result.append(slots[position])
            continue
        following = next(rest, None)
        if following is None:
            break
        result.append(following)
    result.extend(rest)
    return result, [item for item in overflow if item.item_id not in pinned_ids]


# The snapshot in this process, and how it is rebuilt.
_current: list[RulesSnapshot] = [EMPTY]
_building = threading.Lock()
_builder: list[Callable[[], RulesSnapshot]] = []
_last_failure = [-math.inf]
_last_build = [-math.inf]
RETRY_AFTER_FAILURE_SECONDS = 5.0
# Catalog churn bumps the version often: a process rebuilds at most this often (a change waits at most this long).
REBUILD_MIN_INTERVAL_SECONDS = 2.0


def register_builder(build: Callable[[], RulesSnapshot]) -> None:
    _builder[:] = [build]


def snapshot_current() -> RulesSnapshot:
    return _current[0]


def snapshot_observe(version: bytes | None) -> RulesSnapshot:
    """Compare the configuration version read from Redis with this process's snapshot; rebuild when it differs
    (inline only when nothing was ever built, else in the background)."""
    current = _current[0]
    wanted = version or b"0"
    if current.version == wanted or not _builder:
        return current
    if time.monotonic() - _last_failure[0] < RETRY_AFTER_FAILURE_SECONDS:
        return current
    if current is EMPTY:
        _rebuild(wanted)
    elif time.monotonic() - _last_build[0] < REBUILD_MIN_INTERVAL_SECONDS:
        return current
    elif _building.acquire(blocking=False):
        threading.Thread(target=_rebuild_in_background, args=(wanted,), name="rules-snapshot", daemon=True).start()
    return _current[0]


def _rebuild_in_background(version: bytes) -> None:
    from django.db import connection

    try:
        _rebuild(version, locked=True)
    finally:
        connection.close()


def _rebuild(version: bytes, *, locked: bool = False) -> None:
    _last_build[0] = time.monotonic()
    try:
        built = _builder[0]()
        _current[0] = replace(built, version=version)
    except Exception:
        _last_failure[0] = time.monotonic()
        logger.exception("surface.rules_snapshot_failed")
    finally:
        if locked:
            _building.release()


@process_cache("surface.rules_snapshot")
def _snapshot_forget() -> None:
    """Drop the snapshot so the next request rebuilds it."""
    _current[0] = EMPTY
    _last_failure[0] = -math.inf
    _last_build[0] = -math.inf
