"""Reads for the demo storefront and the console (control plane)."""

from __future__ import annotations

from graph_app.interface import ItemCard, items_popular_in_stock, shopper_ids_first

# The storefront's grid shows Graph's item cards as they are.
StorefrontProduct = ItemCard


def storefront_products(*, limit: int) -> list[StorefrontProduct]:
    """The first products of the catalog's grid: in stock, the most popular first."""
    return items_popular_in_stock(limit=limit)


def storefront_users(*, limit: int) -> list[str]:
    return shopper_ids_first(limit=limit)


def placement_names() -> set[str]:
    """The placements configured (a name a storefront sends that is not among them is served with the defaults)."""
    from surface_app.models import Placement

    return set(Placement.objects.values_list("name", flat=True))
