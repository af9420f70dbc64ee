from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, F, OuterRef, Prefetch, Q, QuerySet, Subquery

from graph_app.models import FeatureRow, Item, ItemEntity, ItemPopularity, Shopper


def item_get_with_entities() -> QuerySet[Item]:
    return Item.objects.prefetch_related(Prefetch("entity_links", queryset=ItemEntity.objects.select_related("entity")))


def item_exists(*, external_id: str) -> bool:
    return Item.objects.filter(external_id=external_id).exists()


def item_titles(*, external_ids: list[str]) -> dict[str, str]:
    """Titles of the given items, in one query (unknown ids are left out)."""
    if not external_ids:
        return {}
    return dict(Item.objects.filter(external_id__in=external_ids).values_list("external_id", "title"))


def catalog_has_items() -> bool:
    return Item.objects.exists()


def items_unknown(*, item_ids: list[str]) -> list[str]:
    """Which of these item ids the catalog does not have, in their order (one query)."""
    known = set(Item.objects.filter(external_id__in=item_ids).values_list("external_id", flat=True))
    return [item_id for item_id in item_ids if item_id not in known]


def item_attributes_unknown(*, names: Iterable[str]) -> list[str]:
    """Which of these attribute names no item in the catalog has (one query each)."""
    return [name for name in names if not Item.objects.filter(attributes__has_key=name).exists()]


@dataclass(frozen=True)
class ItemCard:
    """An item as a product grid shows it."""

    item_id: str
    title: str
    category: str
    price: str | None


def items_popular_in_stock(*, limit: int) -> list[ItemCard]:
    """The first products of a catalog grid: in stock, the most popular first (one query)."""
    score = ItemPopularity.objects.filter(item_id=OuterRef("external_id")).values("score")[:1]
    rows = (
        Item.objects.filter(in_stock=True)
        .annotate(popularity=Subquery(score))
        .order_by(F("popularity").desc(nulls_last=True), "external_id")
        .values_list("external_id", "title", "category", "price")[:limit]
    )
    return [
        ItemCard(item_id, title, category, None if price is None else f"{price:.2f}")
        for item_id, title, category, price in rows
    ]


def shopper_ids_first(*, limit: int) -> list[str]:
    """The first shoppers' ids in id order (examples for a demo or a banner)."""
    return list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[:limit])


@dataclass(frozen=True)
class ServedRow:
    """One item of a served slate in the materialized training rows, and what the shopper did with it."""

    user_key: str
    item_id: str
    placement: str
    served_at: datetime
    clicked: bool
    purchased: bool


def slates_reacted_to(*, since: datetime, limit: int) -> list[str]:
    """The newest requests served since then whose slate had at least two items and a click (one query)."""
    reacted = (
        FeatureRow.objects.filter(served_at__gte=since)
        .values("request_id")
        .annotate(rows=Count("id"), positives=Count("id", filter=Q(clicked=True)))
        .filter(rows__gte=2, positives__gte=1)
        .order_by("-request_id")
        .values_list("request_id", flat=True)[:limit]
    )
    return list(reacted)


def slates_served_rows(*, request_ids: list[str]) -> dict[str, list[ServedRow]]:
    """Each request's rows in slot order, requests in id order (one query)."""
    by_request: dict[str, list[ServedRow]] = defaultdict(list)
    rows = FeatureRow.objects.filter(request_id__in=request_ids).order_by("request_id", "slot")
    fields = ("request_id", "user_key", "item_id", "placement", "served_at", "clicked", "purchased")
    for request_id, user_key, item_id, placement, served_at, clicked, purchased in rows.values_list(*fields):
        by_request[request_id].append(ServedRow(user_key, item_id, placement, served_at, clicked, purchased))
    return by_request


@dataclass(frozen=True)
class ItemFacts:
    """What the catalog says of an item for a rule check: its entities other than its category ("brand:acme")."""

    item_id: str
    title: str
    category: str
    entities: tuple[str, ...]
    in_stock: bool


def items_facts(*, item_ids: Iterable[str]) -> dict[str, ItemFacts]:
    """The facts of those items the catalog has (two queries: the items, their entity links)."""
    found: dict[str, ItemFacts] = {}
    for item in item_get_with_entities().filter(external_id__in=item_ids):
        entities = tuple(
            f"{link.entity.kind}:{link.entity.external_id}"
            for link in item.entity_links.all()
            if link.entity.kind != "category"
        )
        found[item.external_id] = ItemFacts(item.external_id, item.title, item.category, entities, item.in_stock)
    return found


def item_ids_in_stock() -> set[str]:
    """Every in-stock item's id (one query; for checks over the whole catalog, not for serving)."""
    return set(Item.objects.filter(in_stock=True).values_list("external_id", flat=True))
