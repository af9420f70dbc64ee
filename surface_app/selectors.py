"""Reads for the demo storefront and the console (control plane)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import F, OuterRef, Subquery

from graph_app.models import Item, ItemPopularity, Shopper


@dataclass(frozen=True)
class StorefrontProduct:
    item_id: str
    title: str
    category: str
    price: str | None


def storefront_products(*, limit: int) -> list[StorefrontProduct]:
    """The first products of the catalog's grid: in stock, the most popular first."""
    score = ItemPopularity.objects.filter(item_id=OuterRef("external_id")).values("score")[:1]
    rows = (
        Item.objects.filter(in_stock=True)
        .annotate(popularity=Subquery(score))
        .order_by(F("popularity").desc(nulls_last=True), "external_id")
        .values_list("external_id", "title", "category", "price")[:limit]
    )
    return [
        StorefrontProduct(item_id, title, category, None if price is None else f"{price:.2f}")
        for item_id, title, category, price in rows
    ]


def storefront_users(*, limit: int) -> list[str]:
    return list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[:limit])


def placement_names() -> set[str]:
    """The placements configured (a name a storefront sends that is not among them is served with the defaults)."""
    from surface_app.models import Placement

    return set(Placement.objects.values_list("name", flat=True))
