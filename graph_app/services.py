"""Writes to the catalog and the knowledge graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
from django.db import IntegrityError, connection, transaction

from graph_app.embeddings import ItemContent, content_features, project, random_projection
from graph_app.models import Entity, Item, ItemEntity, Shopper
from graph_app.online import catalog_entities_publish, catalog_items_publish, entity_keys, pack_static
from personalization.cache import item_cache_invalidate
from personalization.errors import ApplicationError
from personalization.validation import JsonLimitExceeded, json_limits_check
from scoring_app.models import ModelVersion
from scoring_app.selectors import model_artifact_arrays, model_version_active
from surface_app.services import shelves_catalog_changed

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


def _entities_replace(*, item: Item, refs: tuple[EntityRef, ...]) -> None:
    ItemEntity.objects.filter(item=item).delete()
    links = []
    for ref in refs:
        entity, created = Entity.objects.get_or_create(
            kind=ref.kind, external_id=ref.external_id, defaults={"name": ref.name}
        )
        if ref.name and not created and entity.name != ref.name:
            entity.name = ref.name
            entity.save(update_fields=["name"])
        links.append(ItemEntity(item=item, entity=entity, weight=ref.weight))
    ItemEntity.objects.bulk_create(links)


def item_upsert(*, data: ItemInput, projection: np.ndarray | None = None) -> ItemUpsertResult:
    """Create or replace an item. A learned (collaborative) embedding survives edits; otherwise the item gets a
    content vector at once so that it can be retrieved before the next training run."""
    projection = content_projection() if projection is None else projection
    try:
        return _item_write(data=data, projection=projection)
    except IntegrityError:
        # Another request created the same item between our lookup and insert: it is an update after all.
        return _item_write(data=data, projection=projection)


def _item_write(*, data: ItemInput, projection: np.ndarray) -> ItemUpsertResult:
    with transaction.atomic():
        item = Item.objects.select_for_update().filter(external_id=data.external_id).first()
        created = item is None
        # Created or back in stock: shelves that do not show it yet may now.
        appeared = data.in_stock and (item is None or not item.in_stock)
        if item is None:
            item = Item(external_id=data.external_id)
        item.title = data.title
        item.description = data.description
        item.category = data.category
        item.price = data.price
        item.in_stock = data.in_stock
        item.attributes = data.attributes
        if item.embedding_source != "collaborative":
            item.embedding = item_content_vector(data=data, projection=projection)
            item.embedding_source = "content"
        item.full_clean(validate_unique=False)
        item.save()
        _entities_replace(item=item, refs=data.entities)
        keys = entity_keys(category=data.category, entities=[(ref.kind, ref.external_id) for ref in data.entities])
        static = pack_static(
            price=None if data.price is None else float(data.price),
            in_stock=data.in_stock,
            created_at=item.created_at.timestamp(),
        )
        vector = np.asarray(item.embedding, dtype=np.float32).tobytes()

        def publish() -> None:
            catalog_entities_publish(items={data.external_id: keys})
            catalog_items_publish(static={data.external_id: static}, vectors={data.external_id: vector})
            # Its neighbours may have changed: readers keep the old list while one request rebuilds it.
            item_cache_invalidate(item_key=data.external_id, name="similar_items")
            shelves_catalog_changed(changed=[data.external_id], appeared=[data.external_id] if appeared else [])

        transaction.on_commit(publish)
    return ItemUpsertResult(item=item, created=created)


def item_delete(*, item: Item) -> None:
    external_id = item.external_id
    with transaction.atomic():
        item.delete()
        transaction.on_commit(lambda: catalog_entities_publish(items={external_id: ""}))
        transaction.on_commit(lambda: catalog_items_publish(static={}, vectors={}, forget=(external_id,)))
        transaction.on_commit(lambda: shelves_catalog_changed(changed=[external_id]))


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
