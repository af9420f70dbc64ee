"""Blocking a whole category or brand in one step: a filter rule excluding its items, on one placement or every
one, saved through `configuration.rule_save` (validated and reviewed like an edit in the console's form); and what
the console's page of categories and brands lists to block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import OperationalError

from graph_app.interface import catalog_values
from surface_app import configuration
from surface_app.condition_checks import query_cancelled, statement_timeout
from surface_app.models import BusinessRule, Placement

BLOCKABLE_FIELDS = ("category", "brand")
LISTED_MAX = 25
# Counting the listed values' items gets this long; past it the page lists them without counts.
COUNT_BUDGET_MS = 1000


@dataclass(frozen=True)
class BlockableValue:
    field: str
    value: str
    items: int | None  # None: counting took too long
    # Where an enabled filter rule already blocks it: placement names, "every placement".
    blocked_on: tuple[str, ...]


def blockable_values(*, field: str, prefix: str = "", limit: int = LISTED_MAX) -> list[BlockableValue]:
    """Categories or brands starting with `prefix` (any case), with their item counts and where they are blocked."""
    if field not in BLOCKABLE_FIELDS:
        return []
    search = catalog_values.categories_search if field == "category" else catalog_values.brands_search
    values = search(prefix=prefix, limit=limit)
    counts: dict[str, int] | None
    try:
        with statement_timeout(COUNT_BUDGET_MS):
            count = catalog_values.category_item_counts if field == "category" else catalog_values.brand_item_counts
            counts = count(values=values)
    except OperationalError as error:
        if not query_cancelled(error):
            raise
        counts = None
    blocks: dict[str, list[str]] = {}
    rules = BusinessRule.objects.filter(
        kind=BusinessRule.Kind.FILTER, enabled=True, condition__field=field, condition__op="eq",
        condition__value__in=values,
    ).select_related("placement")  # fmt: skip
    for rule in rules.order_by("placement__name"):
        blocks.setdefault(rule.condition["value"], []).append(
            rule.placement.name if rule.placement else "every placement"
        )
    return [
        BlockableValue(field, value, None if counts is None else counts.get(value, 0), tuple(blocks.get(value, ())))
        for value in values
    ]


def block_condition(*, field: str, value: str) -> dict[str, str]:
    """The condition of a block of this category or brand (what the rule form's builder shows as one row)."""
    return {"field": field, "op": "eq", "value": value}


def catalog_value_block(*, field: str, value: str, placement: Placement | None, user: Any = None) -> BusinessRule:
    """A filter rule that takes every item of the category or brand `value` off `placement` (None: every
    placement). Refused, naming why, for an unknown value (with its spelling when only the case differs) or when an
    enabled rule already blocks it there."""
    if field not in BLOCKABLE_FIELDS:
        raise ValidationError(f"Only a category or a brand can be blocked in one step, not '{field}'.")
    if not value:
        raise ValidationError(f"Choose the {field} to block.")
    condition = block_condition(field=field, value=value)
    existing = BusinessRule.objects.filter(
        kind=BusinessRule.Kind.FILTER, enabled=True, placement=placement, condition=condition
    ).first()
    if existing is not None:
        where = f"placement '{placement.name}'" if placement else "every placement"
        raise ValidationError(f"The {field} '{value}' is already blocked on {where} by the rule '{existing.name}'.")
    where = placement.name if placement else "every placement"
    rule = BusinessRule(
        name=f"Block {field} {value} ({where})"[:200],
        kind=BusinessRule.Kind.FILTER,
        placement=placement,
        condition=condition,
    )
    if user is not None:
        rule._history_user = user  # type: ignore[attr-defined]
    return configuration.rule_save(rule=rule, user=user)
