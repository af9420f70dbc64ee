"""Catalog writes in bulk: upsert, partial update and delete of many items at once.

The public contract (names and signatures) is what importers and the batch endpoints code against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from graph_app.models import Item
from graph_app.services import ItemInput, item_delete, item_upsert

PATCH_FIELDS = frozenset({"price", "in_stock", "attributes"})


@dataclass(frozen=True)
class ItemPatch:
    """A partial update: only the fields named in `fields` (a subset of {"price", "in_stock", "attributes"}) change.
    attributes merge at the top level (RFC 7396 style: a key set to None is removed)."""

    external_id: str
    fields: frozenset[str]
    price: Decimal | None = None
    in_stock: bool = True
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BulkWriteOutcome:
    created: list[str]  # external ids, in input order
    updated: list[str]
    deleted: list[str]
    missing: list[str]  # patch/delete of ids not in the catalog


def items_upsert_many(*, rows: Sequence[ItemInput], projection: np.ndarray | None = None) -> BulkWriteOutcome:
    """Create or replace many items (validated rows). A duplicate id within one call: the last row wins."""
    last = {row.external_id: row for row in rows}
    created: list[str] = []
    updated: list[str] = []
    for row in last.values():
        result = item_upsert(data=row, projection=projection)
        (created if result.created else updated).append(row.external_id)
    return BulkWriteOutcome(created=created, updated=updated, deleted=[], missing=[])


def items_patch_many(*, patches: Sequence[ItemPatch]) -> BulkWriteOutcome:
    """Change some fields of existing items. A duplicate id within one call: the patches apply in order."""
    updated: list[str] = []
    missing: list[str] = []
    for patch in patches:
        item = Item.objects.prefetch_related("entity_links__entity").filter(external_id=patch.external_id).first()
        if item is None:
            missing.append(patch.external_id)
            continue
        attributes = dict(item.attributes)
        if "attributes" in patch.fields:
            for key, value in patch.attributes.items():
                if value is None:
                    attributes.pop(key, None)
                else:
                    attributes[key] = value
        from graph_app.services import EntityRef

        item_upsert(
            data=ItemInput(
                external_id=item.external_id,
                title=item.title,
                description=item.description,
                category=item.category,
                price=patch.price if "price" in patch.fields else item.price,
                in_stock=patch.in_stock if "in_stock" in patch.fields else item.in_stock,
                attributes=attributes,
                entities=tuple(
                    EntityRef(kind=link.entity.kind, external_id=link.entity.external_id, name="", weight=link.weight)
                    for link in item.entity_links.all()
                ),
            )
        )
        updated.append(patch.external_id)
    return BulkWriteOutcome(created=[], updated=updated, deleted=[], missing=missing)


def items_delete_many(*, external_ids: Sequence[str]) -> BulkWriteOutcome:
    """Delete many items; ids not in the catalog are reported as missing."""
    deleted: list[str] = []
    missing: list[str] = []
    for external_id in dict.fromkeys(external_ids):
        item = Item.objects.filter(external_id=external_id).first()
        if item is None:
            missing.append(external_id)
            continue
        item_delete(item=item)
        deleted.append(external_id)
    return BulkWriteOutcome(created=[], updated=[], deleted=deleted, missing=missing)
