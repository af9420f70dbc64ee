"""Rules and caps of a placement that defeat each other, and which one wins (control plane: read by the console).

Serving settles every conflict silently, by the order of application in `surface_app.serving.rules` (filters and
block lists before everything, then boosts and buries, then pins by priority, then caps), so a merchandiser learns
of one only from a preview, or a shopper. `conflicts_find` names them beforehand: pure functions over the rules as
serving compiles them (`surface_app.rules_compile`, whose item sets say what a condition matches) and the caps;
`placement_conflicts` loads a placement's.

Campaign caps are not flagged: capping a campaign's pins is what they are for. Nor are the placement cap (it caps
the shelf, pins included) and the cool-down (the shopper's own hide or skip).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.db.models import Q
from django.utils import timezone

from graph_app.interface import items_facts
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.rules_compile import ConditionError, rule_compile
from surface_app.serving.caps import SCOPE_CATEGORY, SCOPE_ENTITY, SCOPE_ITEM, CapSpec
from surface_app.serving.rules import CompiledRule

PIN_FILTERED = "pin_filtered"
PIN_BLOCKED = "pin_blocked"
PIN_CAPPED = "pin_capped"
WEIGHT_FILTERED = "weight_filtered"  # a boost or bury on items a filter or block list removes
BOOST_AND_BURY = "boost_and_bury"
PINS_SAME_SLOT = "pins_same_slot"
ITEM_PINNED_TWICE = "item_pinned_twice"
PIN_NOT_SERVABLE = "pin_not_servable"  # the item is not in the catalog, or out of stock
PIN_BEYOND_SHELF = "pin_beyond_shelf"


@dataclass(frozen=True)
class RuleRef:
    """A rule or cap a conflict names, with its id for the console's links."""

    label: str  # "filter 'No wine'", "cap 'Once a day'"
    rule_id: int | None = None
    cap_id: int | None = None


@dataclass(frozen=True)
class PlacedRule:
    """A rule that serves (or will, once its window opens) on the placement, as serving compiled it."""

    rule_id: int | None
    rule: CompiledRule


@dataclass(frozen=True)
class PlacedCap:
    cap_id: int | None
    cap: CapSpec


@dataclass(frozen=True)
class PinnedItem:
    """What the catalog says of a pinned item."""

    item_id: str
    title: str = ""
    category: str = ""
    entities: tuple[str, ...] = ()  # "brand:acme"..., what entity caps count (the category has its own scope)
    in_stock: bool = True


@dataclass(frozen=True)
class Conflict:
    kind: str
    defeated: RuleRef  # the rule or cap that does not do what its author meant
    winner: RuleRef | None  # None: nothing of the merchandiser's wins (a catalog fact, or a tie that cancels out)
    message: str  # the whole story, naming the rules and which wins
    status: str  # the defeated rule's state, in a few words, for the rules table

    @property
    def rules(self) -> tuple[RuleRef, ...]:
        return (self.defeated,) if self.winner is None else (self.winner, self.defeated)


# How the console names each kind of rule.
KIND_NAMES = {"filter": "filter", "block": "block list", "boost": "boost", "bury": "bury", "pin": "pin"}


def _ref(placed: PlacedRule) -> RuleRef:
    return RuleRef(f"{KIND_NAMES.get(placed.rule.kind, placed.rule.kind)} '{placed.rule.name}'", rule_id=placed.rule_id)


def _cap_ref(placed: PlacedCap) -> RuleRef:
    return RuleRef(f"cap '{placed.cap.name}'", cap_id=placed.cap_id)


def _window(rule: CompiledRule) -> tuple[float, float]:
    start = rule.valid_from if rule.valid_from is not None else -math.inf
    return start, rule.valid_until if rule.valid_until is not None else math.inf


def _overlap(first: CompiledRule, second: CompiledRule) -> bool:
    """Whether the two rules' validity windows share a moment."""
    (first_start, first_end), (second_start, second_end) = _window(first), _window(second)
    return first_start < second_end and second_start < first_end


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _duration(seconds: int) -> str:
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % length == 0:
            return "a " + unit if seconds == length else _plural(seconds // length, unit)
    return _plural(seconds, "second")


def _for_whom(*rules: CompiledRule) -> str:
    audiences = [
        " and ".join(f"{condition.field} {condition.op} {condition.value!r}" for condition in rule.audience)
        for rule in rules
        if rule.audience
    ]
    return f" for shoppers where {' and '.join(audiences)}" if audiences else ""


def _item_text(item_id: str, items: Mapping[str, PinnedItem]) -> str:
    known = items.get(item_id)
    return f"{item_id} ({known.title})" if known is not None and known.title else item_id


def _precedence(winner: CompiledRule, loser: CompiledRule) -> str:
    if winner.priority != loser.priority:
        return f"higher priority, {winner.priority} over {loser.priority}"
    return "same priority, changed more recently"


def _pins_filtered(pins: list[PlacedRule], others: list[PlacedRule], items: Mapping[str, PinnedItem]) -> list[Conflict]:
    found = []
    for pin in pins:
        item_id = pin.rule.item_ids[0]
        for other in others:
            rule = other.rule
            if not _overlap(pin.rule, rule):
                continue
            if rule.kind == "block" and item_id in rule.item_ids:
                kind = PIN_BLOCKED
            elif rule.kind == "filter" and rule.touches(item_id):
                kind = PIN_FILTERED
            else:
                continue
            found.append(
                Conflict(
                    kind=kind, defeated=_ref(pin), winner=_ref(other),
                    message=(
                        f"{_sentence(_ref(other).label)} removes {_item_text(item_id, items)}, which "
                        f"{_ref(pin).label} puts at slot {pin.rule.slot}{_for_whom(rule)}: the "
                        f"{KIND_NAMES[rule.kind]} wins (filters and block lists apply before pins, whatever their "
                        "priority)."
                    ),
                    status=f"removed by {_ref(other).label}{_for_whom(rule)}",
                )
            )  # fmt: skip
    return found


def _cap_counts(cap: CapSpec, item: PinnedItem | None) -> bool:
    """Whether the cap can remove the item (its scope counts something the item has)."""
    if cap.scope == SCOPE_ITEM:
        return True
    if cap.scope == SCOPE_CATEGORY:
        return item is None or bool(item.category)
    if cap.scope == SCOPE_ENTITY:
        return item is None or bool(item.entities)
    return False


def _pins_capped(pins: list[PlacedRule], caps: Sequence[PlacedCap], items: Mapping[str, PinnedItem]) -> list[Conflict]:
    found = []
    for pin in pins:
        if not pin.rule.caps_apply:
            continue  # exempt: the caps count its impressions but never remove it
        item_id = pin.rule.item_ids[0]
        for placed in caps:
            cap = placed.cap
            if not _cap_counts(cap, items.get(item_id)):
                continue
            seen = _plural(cap.max_impressions, "time" if cap.scope == SCOPE_ITEM else "item")
            counted = {
                SCOPE_ITEM: f"it {seen}",
                SCOPE_CATEGORY: f"{seen} of its category",
                SCOPE_ENTITY: f"{seen} of its brand (or another of its entities)",
            }[cap.scope]
            found.append(
                Conflict(
                    kind=PIN_CAPPED, defeated=_ref(pin), winner=_cap_ref(placed),
                    message=(
                        f"{_sentence(_cap_ref(placed).label)} removes {_item_text(item_id, items)}, pinned by "
                        f"{_ref(pin).label}, once a shopper has seen {counted} within "
                        f"{_duration(cap.window_seconds)}: the cap wins, as the pin opts in to frequency caps "
                        '(untick "Frequency caps apply to this pin" to show it at every visit).'
                    ),
                    status=f"removed after {seen} by {_cap_ref(placed).label}",
                )
            )  # fmt: skip
    return found


def _removed_by(rule: CompiledRule) -> frozenset[str] | None:
    """The items a filter or block list removes (None: every item)."""
    return frozenset(rule.item_ids) if rule.kind == "block" else rule.matches


def _weights_filtered(weights: list[PlacedRule], removers: list[PlacedRule]) -> list[Conflict]:
    found = []
    for weight in weights:
        touched = weight.rule.matches
        if touched is None or not touched:
            continue  # a weight on every item, or on none, changes no order: nothing to defeat
        for remover in removers:
            if not _overlap(weight.rule, remover.rule):
                continue
            removed = _removed_by(remover.rule)
            lost = touched if removed is None else touched & removed
            if not lost:
                continue
            share = "all" if len(lost) == len(touched) else f"{len(lost)}"
            found.append(
                Conflict(
                    kind=WEIGHT_FILTERED, defeated=_ref(weight), winner=_ref(remover),
                    message=(
                        f"{_sentence(_ref(remover).label)} removes {share} of the {len(touched)} items "
                        f"{_ref(weight).label} touches{_for_whom(remover.rule)}: the {KIND_NAMES[remover.rule.kind]} "
                        "wins (filters and block lists apply before boosts and buries)."
                    ),
                    status=(
                        f"does nothing: {_ref(remover).label} removes its items"
                        if share == "all"
                        else f"partly undone: {_ref(remover).label} removes {share} of its {len(touched)} items"
                    ),
                )
            )  # fmt: skip
    return found


def _boost_against_bury(boost: PlacedRule, bury: PlacedRule, shared: int) -> Conflict:
    """They multiply on the items both touch: the larger factor wins, equal ones cancel out."""
    net = boost.rule.factor / bury.rule.factor
    if abs(net - 1) < 1e-9:
        winner, defeated, outcome = None, boost, "they cancel out: those items keep the model's order"
    elif net > 1:
        winner, defeated, outcome = boost, bury, f"they multiply and the boost wins (net: up {net:g} times)"
    else:
        winner, defeated, outcome = bury, boost, f"they multiply and the bury wins (net: down {1 / net:g} times)"
    return Conflict(
        kind=BOOST_AND_BURY, defeated=_ref(defeated), winner=None if winner is None else _ref(winner),
        message=(
            f"{_sentence(_ref(boost).label)} (factor {boost.rule.factor:g}) and {_ref(bury).label} (factor "
            f"{bury.rule.factor:g}) both touch {_plural(shared, 'item')}{_for_whom(boost.rule, bury.rule)}: {outcome}."
        ),
        status=(
            f"cancelled out by {_ref(bury).label}" if winner is None
            else f"outweighed by {_ref(winner).label} on {_plural(shared, 'item')}"
        ),
    )  # fmt: skip


def _boosts_and_buries(weights: list[PlacedRule]) -> list[Conflict]:
    found = []
    for boost in [placed for placed in weights if placed.rule.kind == "boost" and placed.rule.matches]:
        for bury in [placed for placed in weights if placed.rule.kind == "bury" and placed.rule.matches]:
            shared = (boost.rule.matches or frozenset()) & (bury.rule.matches or frozenset())
            if shared and bury.rule.factor > 0 and _overlap(boost.rule, bury.rule):
                found.append(_boost_against_bury(boost, bury, len(shared)))
    return found


def _pins_against_pins(pins: list[PlacedRule], items: Mapping[str, PinnedItem]) -> list[Conflict]:
    """Pins in serving order: an earlier one takes its slot (a later one on that slot moves to the next free one)
    and places its item (a later pin of the same item does nothing)."""
    found = []
    for index, loser in enumerate(pins):
        for winner in pins[:index]:
            if not _overlap(winner.rule, loser.rule):
                continue
            why = f"{_precedence(winner.rule, loser.rule)}{_for_whom(winner.rule, loser.rule)}"
            item_id = loser.rule.item_ids[0]
            if winner.rule.item_ids[0] == item_id:
                found.append(
                    Conflict(
                        kind=ITEM_PINNED_TWICE, defeated=_ref(loser), winner=_ref(winner),
                        message=(
                            f"{_sentence(_ref(winner).label)} (slot {winner.rule.slot}) and {_ref(loser).label} "
                            f"(slot {loser.rule.slot}) both pin {_item_text(item_id, items)} at overlapping times: "
                            f"{_ref(winner).label} wins ({why}); {_ref(loser).label} does nothing."
                        ),
                        status=f"does nothing: {_ref(winner).label} pins the same item",
                    )
                )  # fmt: skip
            elif winner.rule.slot == loser.rule.slot:
                campaigns = " and ".join(
                    f"campaign '{pin.rule.campaign}'" if pin.rule.campaign else "no campaign" for pin in (winner, loser)
                )
                found.append(
                    Conflict(
                        kind=PINS_SAME_SLOT, defeated=_ref(loser), winner=_ref(winner),
                        message=(
                            f"{_sentence(_ref(winner).label)} and {_ref(loser).label} ({campaigns}) both take "
                            f"slot {loser.rule.slot} at overlapping times: {_ref(winner).label} wins ({why}); "
                            f"{_ref(loser).label} moves to the next free slot."
                        ),
                        status=f"loses slot {loser.rule.slot} to {_ref(winner).label}",
                    )
                )  # fmt: skip
    return found


def _pins_unseen(pins: list[PlacedRule], items: Mapping[str, PinnedItem], placement_size: int) -> list[Conflict]:
    found = []
    for pin in pins:
        item_id = pin.rule.item_ids[0]
        item = items.get(item_id)
        if item is None or not item.in_stock:
            fact = "is not in the catalog" if item is None else "is out of stock"
            found.append(
                Conflict(
                    kind=PIN_NOT_SERVABLE, defeated=_ref(pin), winner=None,
                    message=f"{_sentence(_ref(pin).label)} pins {_item_text(item_id, items)}, which {fact}: "
                    "serving skips the pin.",
                    status=f"not shown: its item {fact}",
                )
            )  # fmt: skip
        if pin.rule.slot is not None and pin.rule.slot > placement_size:
            found.append(
                Conflict(
                    kind=PIN_BEYOND_SHELF, defeated=_ref(pin), winner=None,
                    message=f"{_sentence(_ref(pin).label)} is at slot {pin.rule.slot}, beyond this placement's "
                    f"{placement_size} slots: it never shows here.",
                    status=f"not shown: slot {pin.rule.slot} is beyond the shelf",
                )
            )  # fmt: skip
    return found


def conflicts_find(
    *,
    rules: Sequence[PlacedRule],
    caps: Sequence[PlacedCap],
    pinned_items: Mapping[str, PinnedItem],
    placement_size: int,
) -> list[Conflict]:
    """Every pair of the placement's rules and caps where one defeats the other, and what serving does alone.

    rules: those that serve or will (enabled, published, not expired), in serving order (priority, then the most
    recently changed first); caps: the enabled ones; pinned_items: the catalog's pinned items (a missing one is not
    in the catalog)."""
    pins = [placed for placed in rules if placed.rule.kind == "pin" and placed.rule.item_ids and placed.rule.slot]
    removers = [placed for placed in rules if placed.rule.kind in ("filter", "block")]
    weights = [placed for placed in rules if placed.rule.kind in ("boost", "bury")]
    return [
        *_pins_filtered(pins, removers, pinned_items),
        *_pins_capped(pins, caps, pinned_items),
        *_pins_against_pins(pins, pinned_items),
        *_pins_unseen(pins, pinned_items, placement_size),
        *_weights_filtered(weights, removers),
        *_boosts_and_buries(weights),
    ]


def _pinned_items(item_ids: set[str]) -> dict[str, PinnedItem]:
    return {
        item_id: PinnedItem(facts.item_id, facts.title, facts.category, facts.entities, facts.in_stock)
        for item_id, facts in items_facts(item_ids=item_ids).items()
    }


def _cap_spec(cap: FrequencyCap) -> CapSpec:
    return CapSpec(
        scope=cap.scope, max_impressions=cap.max_impressions, window_seconds=cap.window_seconds, name=cap.name,
        per_placement=cap.placement_id is not None,
    )  # fmt: skip


def placement_conflicts(*, placement: Placement) -> list[Conflict]:
    """The conflicts among the rules and caps that touch the placement (its own and the every-placement ones) and
    serve now or later: enabled, published, not expired, as the serving snapshot takes them."""
    scope = Q(placement=placement) | Q(placement__isnull=True)
    rows = (
        BusinessRule.objects.filter(scope, enabled=True, status=BusinessRule.Status.PUBLISHED)
        .filter(Q(valid_until__isnull=True) | Q(valid_until__gt=timezone.now()))
        .select_related("placement")
        .order_by("-priority", "-updated_at")
    )
    rules: list[PlacedRule] = []
    for row in rows:
        try:
            rules.append(PlacedRule(row.pk, rule_compile(row)))
        except ConditionError:
            continue  # serving skips it too
    caps = [PlacedCap(cap.pk, _cap_spec(cap)) for cap in FrequencyCap.objects.filter(scope, enabled=True)]
    pinned = {placed.rule.item_ids[0] for placed in rules if placed.rule.kind == "pin" and placed.rule.item_ids}
    return conflicts_find(rules=rules, caps=caps, pinned_items=_pinned_items(pinned), placement_size=placement.size)


def conflicts_by_defeated_rule(conflicts: Sequence[Conflict]) -> dict[int, list[Conflict]]:
    """Rule id -> the conflicts that defeat it (caps are never the defeated side), for the rules table's states."""
    defeated: dict[int, list[Conflict]] = {}
    for conflict in conflicts:
        if conflict.defeated.rule_id is not None:
            defeated.setdefault(conflict.defeated.rule_id, []).append(conflict)
    return defeated
