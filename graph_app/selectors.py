from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from graph_app.models import Item, ItemEntity


def item_get_with_entities() -> QuerySet[Item]:
    return Item.objects.prefetch_related(Prefetch("entity_links", queryset=ItemEntity.objects.select_related("entity")))


def item_exists(*, external_id: str) -> bool:
    return Item.objects.filter(external_id=external_id).exists()
