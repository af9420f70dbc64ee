"""Reads for the console's pages (control plane: the ORM is fine here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from surface_app.interface import Conflict, conflicts_by_defeated_rule
from surface_app.models import BusinessRule, FrequencyCap, Placement

# The order serving applies them in (see `surface_app.serving.rules`): filters, boosts / buries, diversity, pins,
# then caps as the impressions are recorded.
STEPS = (
    ("1. Filters", (BusinessRule.Kind.BLOCK, BusinessRule.Kind.FILTER)),
    ("2. Boosts and buries", (BusinessRule.Kind.BOOST, BusinessRule.Kind.BURY)),
    ("3. Diversity", ()),
    ("4. Pins", (BusinessRule.Kind.PIN,)),
)


@dataclass(frozen=True)
class PlacementRuleRow:
    step: str
    kind: str
    name: str
    rule_id: int | None
    cap_id: int | None
    scope: str  # "this placement" or "every placement"
    priority: int | None
    validity: str
    audience: str
    state: str  # "serving", "scheduled", "expired", "disabled", "draft (waiting for review)"; and what defeats it
    defeated: bool = False  # another rule or cap (or the catalog) keeps it from doing what it says


def _validity(valid_from: datetime | None, valid_until: datetime | None) -> str:
    if not valid_from and not valid_until:
        return "always"
    start = f"{valid_from:%Y-%m-%d %H:%M}" if valid_from else "…"
    end = f"{valid_until:%Y-%m-%d %H:%M}" if valid_until else "…"
    return f"{start} → {end}"


def _state(rule: BusinessRule, now: datetime) -> str:
    if not rule.enabled:
        return "disabled"
    if rule.status == BusinessRule.Status.DRAFT:
        return "draft (waiting for review)"
    if rule.valid_until and rule.valid_until <= now:
        return "expired"
    if rule.valid_from and rule.valid_from > now:
        return "scheduled"
    return "serving"


def _audience(audience: object) -> str:
    if not audience:
        return "everyone"
    entries = audience if isinstance(audience, list) else [audience]
    return " and ".join(
        f"{entry.get('field')} {entry.get('op')} {entry.get('value')!r}" if isinstance(entry, dict) else str(entry)
        for entry in entries
    )


def _state_with_conflicts(state: str, conflicts: list[Conflict]) -> str:
    if not conflicts or state in ("disabled", "expired"):
        return state
    return f"{state}, but {'; '.join(conflict.status for conflict in conflicts)}"


def placement_rules_in_order(*, placement: Placement, conflicts: Sequence[Conflict] = ()) -> list[PlacementRuleRow]:
    """Every rule and cap that can touch the placement (its own and the every-placement ones), in the order they
    apply; within a kind by priority, then the most recently changed first (how serving breaks ties). A rule that
    `conflicts` (`surface_app.conflicts.placement_conflicts`) defeat says so in its state."""
    now = timezone.now()
    defeated = conflicts_by_defeated_rule(conflicts)
    rules = list(
        BusinessRule.objects.filter(Q(placement=placement) | Q(placement__isnull=True)).order_by(
            "-priority", "-updated_at"
        )
    )
    rows: list[PlacementRuleRow] = []
    for step, kinds in STEPS:
        if not kinds:
            limits = [
                f"at most {placement.max_per_category} per category" if placement.max_per_category else "",
                f"at most {placement.max_per_brand} per brand" if placement.max_per_brand else "",
            ]
            text = ", ".join(limit for limit in limits if limit)
            if text:
                rows.append(PlacementRuleRow(step, "diversity", text, None, None, "this placement", None, "always",
                                             "everyone", "serving" if placement.enabled else "disabled"))  # fmt: skip
            continue
        for rule in rules:
            if rule.kind in kinds:
                rows.append(
                    PlacementRuleRow(
                        step=step, kind=rule.get_kind_display(), name=rule.name, rule_id=rule.pk, cap_id=None,
                        scope="this placement" if rule.placement_id else "every placement", priority=rule.priority,
                        validity=_validity(rule.valid_from, rule.valid_until), audience=_audience(rule.audience),
                        state=_state_with_conflicts(_state(rule, now), defeated.get(rule.pk, [])),
                        defeated=bool(defeated.get(rule.pk)),
                    )
                )  # fmt: skip
    caps = FrequencyCap.objects.filter(Q(placement=placement) | Q(placement__isnull=True))
    for cap in caps.order_by("scope", "name"):
        rows.append(
            PlacementRuleRow(
                step="5. Frequency caps", kind=cap.get_scope_display(), name=str(cap), rule_id=None, cap_id=cap.pk,
                scope="this placement" if cap.placement_id else "every placement", priority=None, validity="always",
                audience="everyone", state="serving" if cap.enabled else "disabled",
            )
        )  # fmt: skip
    return rows
