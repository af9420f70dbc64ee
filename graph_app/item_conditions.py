"""Rule conditions on items as queries on the catalog: Surface parses a rule's conditions (`field op value`,
`surface_app.rules_compile`) and Graph, which owns the items' fields and tables, matches and counts them.
Control plane (the rules snapshot's compile, the console's checks), ORM queries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from django.db.models import Count, Max, Min, Q

from graph_app.models import Item, ItemEntity

_LOOKUPS = {"eq": "exact", "in": "in", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte", "contains": "icontains"}


class ItemCondition(Protocol):
    """One condition on an item's field (`category`, `price`, `brand`, `title`, `in_stock`, `attributes.<name>`)."""

    @property
    def field(self) -> str: ...

    @property
    def op(self) -> str: ...

    @property
    def value(self) -> Any: ...


@dataclass(frozen=True)
class ItemCount:
    matches: int
    total: int
    # True when both numbers are estimates from a sample.
    estimated: bool = False


def _item_q(condition: ItemCondition) -> Q:
    if condition.field == "brand":
        brands = ItemEntity.objects.filter(entity__kind="brand")
        if condition.op in ("eq", "ne"):
            matching = brands.filter(entity__external_id=condition.value)
        elif condition.op == "in":
            matching = brands.filter(entity__external_id__in=condition.value)
        else:
            matching = brands.filter(**{f"entity__external_id__{_LOOKUPS[condition.op]}": condition.value})
        q = Q(pk__in=matching.values("item_id"))
    else:
        path = condition.field.replace(".", "__")
        lookup = "exact" if condition.op == "ne" else _LOOKUPS[condition.op]
        q = Q(**{f"{path}__{lookup}": condition.value})
    return ~q if condition.op == "ne" else q


def _conditions_q(conditions: Sequence[ItemCondition]) -> Q:
    """The items the conditions match (all must hold), as a filter on `Item`."""
    query = Q()
    for condition in conditions:
        query &= _item_q(condition)
    return query


def item_ids_matching(*, conditions: Sequence[ItemCondition]) -> frozenset[str]:
    """The ids of the catalog items every condition holds for (one query)."""
    return frozenset(Item.objects.filter(_conditions_q(conditions)).values_list("external_id", flat=True))


def items_in_stock(*, item_ids: Iterable[str]) -> frozenset[str]:
    """Which of these items the catalog has in stock (one query)."""
    return frozenset(Item.objects.filter(external_id__in=item_ids, in_stock=True).values_list("external_id", flat=True))


def items_matching_count(*, conditions: Sequence[ItemCondition]) -> ItemCount:
    """How many catalog items the conditions match, of how many, exactly (a scan: the caller bounds its time). No
    condition matches every item."""
    total = Item.objects.count()
    matches = Item.objects.filter(_conditions_q(conditions)).count() if conditions else total
    return ItemCount(matches=matches, total=total)


def items_matching_estimate(*, conditions: Sequence[ItemCondition], sample_ids: int, stretches: int) -> ItemCount:
    """An estimate for a big catalog from `sample_ids` ids in `stretches` stretches spread evenly over the id range
    (the primary key's index: a bounded read): the share of the sampled items that match, and the catalog's size
    from how densely the sampled ids are used. A catalog within the sample's size is counted whole, exactly."""
    bounds = Item.objects.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return ItemCount(matches=0, total=0)
    low, span = bounds["low"], bounds["high"] - bounds["low"] + 1
    matching = _conditions_q(conditions) if conditions else Q()
    if span <= sample_ids:
        counted = Item.objects.aggregate(seen=Count("pk"), matching=Count("pk", filter=matching))
        return ItemCount(matches=counted["matching"], total=counted["seen"])
    width = sample_ids // stretches
    step = span / stretches  # at least `width`: the stretches do not overlap
    sample = Q()
    for stretch in range(stretches):
        start = low + int(stretch * step)
        sample |= Q(pk__gte=start, pk__lt=start + width)
    counted = Item.objects.filter(sample).aggregate(seen=Count("pk"), matching=Count("pk", filter=matching))
    if not counted["seen"]:
        return ItemCount(matches=0, total=0, estimated=True)
    total = round(counted["seen"] * span / (width * stretches))
    return ItemCount(matches=round(total * counted["matching"] / counted["seen"]), total=total, estimated=True)
