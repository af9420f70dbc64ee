"""Graph's part of erasing a shopper (the whole erasure is `operations.erasure`): the shopper's row (traits, user
vector), its training rows, the console history naming it, its cached user lists and traits in Redis."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from graph_app.item_model import item_model_lists_forget
from graph_app.models import FeatureRow, Shopper
from personalization.cache import user_caches_erase


@dataclass(frozen=True, slots=True)
class ShopperRowsErased:
    feature_rows: int
    shoppers: int
    redis_keys: int


def erased_shopper_repr(shopper_id: int) -> str:
    """How the console's history names an erased shopper: by its row number, never its id."""
    return f"user #{shopper_id} (erased)"


def _console_history_redact(*, shopper_ids: list[int]) -> None:
    """The console's history of the shopper's row (changes made in the admin) stops naming it."""
    content_type = ContentType.objects.get_for_model(Shopper)
    for shopper_id in shopper_ids:
        LogEntry.objects.filter(content_type=content_type, object_id=str(shopper_id)).update(
            object_repr=erased_shopper_repr(shopper_id)
        )


def shopper_rows_erase(*, user_id: str, user_keys: list[str]) -> ShopperRowsErased:
    """The rows in one transaction, then the caches of each user key (user caches and item-model lists)."""
    with transaction.atomic():
        feature_rows, _ = FeatureRow.objects.filter(user_key__in=user_keys).delete()
        shopper_ids = list(Shopper.objects.filter(external_id=user_id).values_list("pk", flat=True))
        shoppers, _ = Shopper.objects.filter(pk__in=shopper_ids).delete()
        _console_history_redact(shopper_ids=shopper_ids)
    caches = sum(user_caches_erase(user_key=user_key) for user_key in user_keys)
    caches += item_model_lists_forget(user_keys=user_keys)
    return ShopperRowsErased(feature_rows=feature_rows, shoppers=shoppers, redis_keys=caches)
