"""Writes to the catalog and the knowledge graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
from django.db import connection, transaction

from graph_app.embeddings import ItemContent, content_features, project, random_projection
from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.selectors import model_artifact_arrays, model_version_active
from graph_app.models import Item, Shopper
from personalization.errors import ApplicationError
from personalization.validation import JsonLimitExceeded, json_limits_check

ITEM_BATCH_MAX = 1000


@dataclass(frozen=True)
class EntityRef:
    kind: str
    external_id: str
    name: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class ItemInput:
    external_id: str
    title: str
    description: str = ""
    category: str = ""
    price: Decimal | None = None
    in_stock: bool = True
    attributes: dict[str, Any] = field(default_factory=dict)
    entities: tuple[EntityRef, ...] = ()


@dataclass(frozen=True)
class ItemUpsertResult:
    item: Item
    created: bool


def content_projection() -> np.ndarray:
    """The projection from content features into the embedding space that the serving model uses."""
    active = model_version_active(kind=ModelVersion.Kind.EMBEDDINGS)
    if active is None:
        return _default_projection()
    return model_artifact_arrays(version=active.version)["content_projection"]


_default_projection_cache: list[np.ndarray] = []


def _default_projection() -> np.ndarray:
    if not _default_projection_cache:
        _default_projection_cache.append(random_projection())
    return _default_projection_cache[0]


def item_content_vector(*, data: ItemInput, projection: np.ndarray) -> list[float]:
    content = ItemContent(
        title=data.title,
        description=data.description,
        category=data.category,
        entities=tuple((ref.kind, ref.external_id, ref.weight) for ref in data.entities),
        attributes=data.attributes,
    )
    return project(content_features(content), projection).tolist()


def item_upsert(*, data: ItemInput, projection: np.ndarray | None = None) -> ItemUpsertResult:
    """Create or replace an item: a batch of one (`graph_app.catalog_bulk.items_upsert_many`, the one write path).
    A learned (collaborative) embedding survives edits; otherwise the item gets a content vector at once so that it
    can be retrieved before the next training run."""
    from graph_app.catalog_bulk import items_upsert_many

    outcome = items_upsert_many(rows=[data], projection=projection)
    return ItemUpsertResult(item=Item.objects.get(external_id=data.external_id), created=bool(outcome.created))


def item_delete(*, item: Item) -> None:
    """Delete an item: a batch of one (`graph_app.catalog_bulk.items_delete_many`)."""
    from graph_app.catalog_bulk import items_delete_many

    items_delete_many(external_ids=[item.external_id])


def shoppers_ensure(*, external_ids: set[str]) -> None:
    """Create the users not known yet (one statement: the event log's consumer calls this for every batch)."""
    if external_ids:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO graph_app_shopper (external_id, traits, created_at, updated_at) "
                "SELECT id, '{}'::jsonb, now(), now() FROM unnest(%s::text[]) AS u(id) "
                "ON CONFLICT (external_id) DO NOTHING",
                [sorted(external_ids)],
            )


def shoppers_create(*, traits_by_user: dict[str, dict[str, Any]]) -> None:
    """Shoppers with these traits, in this order, in one statement; a shopper that exists is left as it is."""
    Shopper.objects.bulk_create(
        [Shopper(external_id=external_id, traits=traits) for external_id, traits in traits_by_user.items()],
        ignore_conflicts=True,
    )


def shopper_traits_set(*, external_id: str, traits: dict[str, Any]) -> tuple[Shopper, bool]:
    """Replace a user's traits (what rule audiences match, e.g. age for compliance filters); serving reads them
    from Redis, written after commit."""
    encoded = _shopper_traits_encode(traits)
    shopper, created = Shopper.objects.update_or_create(external_id=external_id, defaults={"traits": traits})
    transaction.on_commit(lambda: _shopper_traits_publish(external_id=external_id, encoded=encoded))
    return shopper, created


def shopper_traits_merge(*, external_id: str, traits: dict[str, Any]) -> Shopper:
    """Merge traits into a user's, as Segment's identify does: a trait sent replaces the one of the same name, the
    others stay. A new user is created. Serving reads the result from Redis, written after commit."""
    with transaction.atomic():
        shopper, _ = Shopper.objects.select_for_update().get_or_create(external_id=external_id)
        current = shopper.traits if isinstance(shopper.traits, dict) else {}
        merged = {**current, **traits}
        encoded = _shopper_traits_encode(merged)
        if merged != shopper.traits:
            shopper.traits = merged
            shopper.save(update_fields=["traits", "updated_at"])
        transaction.on_commit(lambda: _shopper_traits_publish(external_id=external_id, encoded=encoded))
    return shopper


def _shopper_traits_encode(traits: dict[str, Any]) -> bytes:
    """What serving reads, encoded before anything is stored: JSON allows integers serving cannot hold."""
    try:
        json_limits_check(traits)  # also the numbers jsonb would give back as integers too wide (e.g. 1e300)
    except JsonLimitExceeded as refused:
        raise ApplicationError(f"traits: {refused.problem}", errors={"traits": [refused.problem]}) from refused
    try:
        return orjson.dumps(traits)
    except TypeError as error:
        raise ApplicationError(f"traits: {error}.", errors={"traits": [f"{error}."]}) from error


def _shopper_traits_publish(*, external_id: str, encoded: bytes) -> None:
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    get_control_redis().set(redis_keys.user_traits(external_id), encoded)


_POPULARITY_REPLACE_SQL = """
INSERT INTO graph_app_itempopularity (item_id, category, score)
SELECT p.id, coalesce(i.category, ''), p.score
FROM unnest(%s::text[], %s::float8[]) AS p(id, score) LEFT JOIN graph_app_item i ON i.external_id = p.id
"""


def item_popularity_replace(*, scores: dict[str, float]) -> None:
    """The items' popularity replaced as a whole (an item left out has none), in one transaction: readers see
    the old table or the new one. Items not in the catalog yet are kept: the readers join the catalog."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM graph_app_itempopularity")
        cursor.execute(_POPULARITY_REPLACE_SQL, [list(scores), list(scores.values())])
