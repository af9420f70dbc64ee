"""Reads for the demo storefront (control plane)."""

from __future__ import annotations

from dataclasses import dataclass

from graph_app.models import Item, Shopper


@dataclass(frozen=True)
class StorefrontProduct:
    item_id: str
    title: str
    category: str
    price: str | None


def storefront_products(*, limit: int) -> list[StorefrontProduct]:
    """The first products of the catalog's grid: in stock, the most popular first."""
    rows = (
        Item.objects.filter(in_stock=True)
        .order_by("-popularity", "external_id")
        .values_list("external_id", "title", "category", "price")[:limit]
    )
    return [
        StorefrontProduct(item_id, title, category, None if price is None else f"{price:.2f}")
        for item_id, title, category, price in rows
    ]


def storefront_users(*, limit: int) -> list[str]:
    return list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[:limit])
