from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from graph_app.models import Item, ItemEntity


def item_get_with_entities() -> QuerySet[Item]:
    return Item.objects.prefetch_related(Prefetch("entity_links", queryset=ItemEntity.objects.select_related("entity")))


def item_exists(*, external_id: str) -> bool:
    return Item.objects.filter(external_id=external_id).exists()


def item_titles(*, external_ids: list[str]) -> dict[str, str]:
    """Titles of the given items, in one query (unknown ids are left out)."""
    if not external_ids:
        return {}
    return dict(Item.objects.filter(external_id__in=external_ids).values_list("external_id", "title"))
