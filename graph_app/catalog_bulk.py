"""Catalog writes in bulk: upsert, partial update and delete of many items, a few SQL statements per call.

The one write path of the catalog: the single-item services (`item_upsert`, `item_delete`) are calls with one row.
Each call is one transaction; after it commits the online catalog (Redis), the items' "similar_items" caches and
the live shelves hear of the whole call at once (`_CatalogChange.publish`).

Rows lock in `external_id` order, so two concurrent calls touching the same items wait instead of deadlocking.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import orjson
import psycopg
import scipy.sparse
from django.db import DatabaseError, IntegrityError, connection, transaction

from graph_app.embeddings import _TOKEN, CONTENT_FEATURE_BUCKETS, normalize_rows
from graph_app.online import catalog_write, entity_keys, pack_static
from graph_app.services import EntityRef, ItemInput, content_projection
from personalization.cache import item_cache_invalidate_many
from personalization.errors import ApplicationError
from surface_app.services import shelves_catalog_changed

logger = logging.getLogger(__name__)

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


class _Stored(NamedTuple):
    """An item as the write found it (`_LOCK_SQL`, in this order)."""

    pk: int
    external_id: str
    in_stock: bool
    price: Decimal | None
    learned: bool  # a collaborative embedding, which catalog edits keep
    attributes_json: str
    title: str
    description: str
    category: str
    created_at: float  # Unix seconds


@dataclass
class _CatalogChange:
    """What a committed write tells Redis and the shelves (one pipeline, one cache round trip, one message)."""

    entity_keys: dict[str, str] = field(default_factory=dict)  # "" forgets the item
    static: dict[str, bytes] = field(default_factory=dict)
    vectors: dict[str, bytes] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    appeared: list[str] = field(default_factory=list)  # created in stock, or back in stock
    created: set[str] = field(default_factory=set)  # of those, the new items: no cached list of their own yet

    def publish(self) -> None:
        # Every item's facts are written (a repair if Redis lost them); only changed ones move the catalog version.
        catalog_write(
            entities=self.entity_keys,
            static=self.static,
            vectors=self.vectors,
            forget=tuple(self.forget),
            changed=[*self.changed, *self.appeared],
        )
        # Their neighbours may have changed: readers keep the old lists while one request rebuilds each. So may the
        # lists of the items nearest to those that appeared, which now belong in them.
        nearest = _neighbours_of(self.appeared) if len(self.appeared) <= NEIGHBOUR_LISTS_TOUCHED_MAX else []
        returned = [item_id for item_id in self.appeared if item_id not in self.created]
        item_cache_invalidate_many(item_keys=[*self.changed, *returned, *nearest], name="similar_items")
        shelves_catalog_changed(changed=self.changed, appeared=self.appeared)


# A write where at most this many items appeared (a merchant's edits, an import's small batches) marks stale the
# cached similar lists of each one's nearest items, so that the new item shows in them at the next request; for
# more, one nearest-neighbour search each would cost more than the write (the lists refresh within
# SIMILAR_ITEMS_FRESH_SECONDS, 5 minutes, anyway).
NEIGHBOUR_LISTS_TOUCHED_MAX = 100
# An item is in the cached list of each of its nearest items only approximately (nearness is not symmetric in
# rank): its 30 nearest cover most of the lists (100 long) it enters.
NEIGHBOURS_TOUCHED = 30

_NEIGHBOURS_SQL = """
SELECT DISTINCT near.external_id
FROM graph_app_item AS item
CROSS JOIN LATERAL (
    SELECT other.external_id FROM graph_app_item AS other
    WHERE other.in_stock AND other.embedding IS NOT NULL AND other.id <> item.id
    ORDER BY other.embedding <=> item.embedding LIMIT %s
) AS near
WHERE item.external_id = ANY(%s::text[]) AND item.embedding IS NOT NULL
"""


def _neighbours_of(item_ids: list[str]) -> list[str]:
    if not item_ids:
        return []
    try:
        with connection.cursor() as cursor:
            cursor.execute(_NEIGHBOURS_SQL, [NEIGHBOURS_TOUCHED, item_ids])
            return [external_id for (external_id,) in cursor.fetchall()]
    except DatabaseError as error:
        # After commit: the write stands; the lists catch up within their freshness.
        logger.warning("graph.catalog_neighbours_failed", extra={"items": len(item_ids), "error": str(error)})
        return []


def items_upsert_many(*, rows: Sequence[ItemInput], projection: np.ndarray | None = None) -> BulkWriteOutcome:
    """Create or replace many items (rows validated by the caller). A duplicate id within one call: the last row
    wins. A learned (collaborative) embedding survives; other items get their content vector at once, so that they
    can be retrieved before the next training run."""
    latest = {row.external_id: row for row in rows}
    if not latest:
        return BulkWriteOutcome(created=[], updated=[], deleted=[], missing=[])
    ordered = sorted(latest.values(), key=lambda row: row.external_id)
    vectors = content_vectors(rows=ordered, projection=content_projection() if projection is None else projection)
    change = _CatalogChange()
    with transaction.atomic(), _check_violations(), _cursor() as cursor:
        ids = [row.external_id for row in ordered]
        cursor.execute(_LOCK_SQL, [ids])
        found = {row.external_id: row for row in map(_Stored._make, cursor.fetchall())}
        # external id -> (pk, learned embedding, created at), of the rows found, then of those written.
        facts = {external_id: (row.pk, row.learned, float(row.created_at)) for external_id, row in found.items()}
        cursor.execute(
            _UPSERT_SQL,
            [
                ids,
                [row.title for row in ordered],
                [row.description for row in ordered],
                [row.category for row in ordered],
                [_decimal(row.price) for row in ordered],
                [row.in_stock for row in ordered],
                [orjson.dumps(row.attributes).decode() for row in ordered],
                [_vector_literal(vector) for vector in vectors],
            ],
        )
        written = set()
        for pk, external_id, learned, created_at in cursor.fetchall():
            facts[external_id] = (pk, learned, float(created_at))
            written.add(pk)
        written |= _links_replace(
            cursor, rows=ordered, item_pks={external_id: facts[external_id][0] for external_id in ids}
        )
        learned_vectors = _embeddings_read(cursor, pks=[pk for pk, learned, _ in facts.values() if learned])
        for row, vector in zip(ordered, vectors, strict=True):
            pk, learned, created_at = facts[row.external_id]
            change.entity_keys[row.external_id] = entity_keys(
                category=row.category, entities=[(ref.kind, ref.external_id) for ref in row.entities]
            )
            change.static[row.external_id] = pack_static(
                price=None if row.price is None else float(row.price), in_stock=row.in_stock, created_at=created_at
            )
            change.vectors[row.external_id] = (learned_vectors[pk] if learned else vector).tobytes()
            if pk not in written:
                continue  # as stored: nothing to tell the shelves or the caches
            before = found.get(row.external_id)
            appeared = row.in_stock and (before is None or not before.in_stock)  # created in stock, or back in stock
            (change.appeared if appeared else change.changed).append(row.external_id)
            if before is None:
                change.created.add(row.external_id)
        transaction.on_commit(change.publish)
    created = [external_id for external_id in latest if external_id not in found]
    updated = [external_id for external_id in latest if external_id in found]
    return BulkWriteOutcome(created=created, updated=updated, deleted=[], missing=[])


def items_patch_many(*, patches: Sequence[ItemPatch]) -> BulkWriteOutcome:
    """Change some fields of existing items. A duplicate id within one call: its patches apply in input order."""
    merged: dict[str, ItemPatch] = {}
    for patch in patches:
        unknown = patch.fields - PATCH_FIELDS
        if unknown or not patch.fields:
            raise ValueError(f"{patch.external_id}: patch fields must be a non-empty subset of {sorted(PATCH_FIELDS)}")
        merged[patch.external_id] = _patch_compose(merged.get(patch.external_id), patch)
    if not merged:
        return BulkWriteOutcome(created=[], updated=[], deleted=[], missing=[])
    ids = sorted(merged)
    change = _CatalogChange()
    with transaction.atomic(), _check_violations(), _cursor() as cursor:
        cursor.execute(_LOCK_SQL, [ids])
        current = {row.external_id: row for row in map(_Stored._make, cursor.fetchall())}
        patched: list[_Patched] = []
        for external_id in ids:
            before = current.get(external_id)
            if before is None:
                continue
            after = _patch_apply(before, merged[external_id])
            patched.append(after)
            change.static[external_id] = pack_static(
                price=None if after.price is None else float(after.price),
                in_stock=after.in_stock,
                created_at=float(before.created_at),
            )
        vectors = _patched_vectors(cursor, patched=[row for row in patched if row.content_changed])
        cursor.execute(
            _PATCH_SQL,
            [
                [row.stored.pk for row in patched],
                [_decimal(row.price) for row in patched],
                [row.in_stock for row in patched],
                [orjson.dumps(row.attributes).decode() for row in patched],
                [
                    _vector_literal(vectors[row.stored.external_id]) if row.stored.external_id in vectors else None
                    for row in patched
                ],
            ],
        )
        written = {pk for (pk,) in cursor.fetchall()}
        for row in patched:
            if row.stored.pk in written:  # else as stored: nothing to tell the shelves or the caches
                appeared = row.in_stock and not row.stored.in_stock
                (change.appeared if appeared else change.changed).append(row.stored.external_id)
        change.vectors = {external_id: vector.tobytes() for external_id, vector in vectors.items()}
        transaction.on_commit(change.publish)
    present = [external_id for external_id in merged if external_id in current]
    missing = [external_id for external_id in merged if external_id not in current]
    return BulkWriteOutcome(created=[], updated=present, deleted=[], missing=missing)


class _Patched(NamedTuple):
    stored: _Stored
    price: Decimal | None
    in_stock: bool
    attributes: dict[str, Any]
    content_changed: bool


def _patch_apply(before: _Stored, patch: ItemPatch) -> _Patched:
    attributes = orjson.loads(before.attributes_json)
    if "attributes" in patch.fields:
        attributes = _attributes_merge(attributes, patch.attributes)
    return _Patched(
        stored=before,
        price=patch.price if "price" in patch.fields else before.price,
        in_stock=patch.in_stock if "in_stock" in patch.fields else before.in_stock,
        attributes=attributes,
        # Attributes are content: a content-embedded item gets its new content vector.
        content_changed="attributes" in patch.fields and not before.learned,
    )


def _patched_vectors(cursor: Any, *, patched: list[_Patched]) -> dict[str, np.ndarray]:
    """The new content vectors of items whose attributes a patch changed (their other content read as stored)."""
    if not patched:
        return {}
    refs = _entities_read(cursor, pks=[row.stored.pk for row in patched])
    contents = [
        ItemInput(
            external_id=row.stored.external_id,
            title=row.stored.title,
            description=row.stored.description,
            category=row.stored.category,
            attributes=row.attributes,
            entities=refs.get(row.stored.pk, ()),
        )
        for row in patched
    ]
    fresh = content_vectors(rows=contents, projection=content_projection())
    return {row.stored.external_id: vector for row, vector in zip(patched, fresh, strict=True)}


def items_delete_many(*, external_ids: Sequence[str]) -> BulkWriteOutcome:
    """Delete many items with their entity links; ids not in the catalog are reported as missing."""
    wanted = list(dict.fromkeys(external_ids))
    if not wanted:
        return BulkWriteOutcome(created=[], updated=[], deleted=[], missing=[])
    change = _CatalogChange()
    with transaction.atomic(), _cursor() as cursor:
        cursor.execute(_LOCK_SQL, [sorted(wanted)])
        pks = {row.external_id: row.pk for row in map(_Stored._make, cursor.fetchall())}
        cursor.execute("DELETE FROM graph_app_itementity WHERE item_id = ANY(%b::bigint[])", [list(pks.values())])
        cursor.execute("DELETE FROM graph_app_item WHERE id = ANY(%b::bigint[])", [list(pks.values())])
        deleted = [external_id for external_id in wanted if external_id in pks]
        change.entity_keys = dict.fromkeys(deleted, "")
        change.forget = deleted
        change.changed = deleted
        transaction.on_commit(change.publish)
    return BulkWriteOutcome(
        created=[],
        updated=[],
        deleted=deleted,
        missing=[external_id for external_id in wanted if external_id not in pks],
    )


def content_vectors(*, rows: Sequence[ItemInput], projection: np.ndarray) -> np.ndarray:
    """The rows' content vectors (float32, one row each): `graph_app.embeddings.content_features` projected as
    `project` does, for a whole batch in one sparse product. The features' own normalization is left out: the
    projected vector is normalized anyway."""
    features: list[str] = []
    weights: list[float] = []
    counts: list[int] = []
    for row in rows:
        before = len(features)
        for token in _TOKEN.findall(row.title.lower()):
            features.append("w:" + token)
            weights.append(1.0)
        for token in _TOKEN.findall(row.description.lower())[:200]:
            features.append("w:" + token)
            weights.append(0.5)
        if row.category:
            features.append("category:" + row.category.lower())
            weights.append(2.0)
        for ref in row.entities:
            features.append(f"entity:{ref.kind}:{ref.external_id.lower()}")
            weights.append(2.0 * ref.weight)
        for key, value in row.attributes.items():
            if isinstance(value, str | int | float | bool):
                features.append(f"attr:{key}:{str(value).lower()}")
                weights.append(1.0)
        counts.append(len(features) - before)
    codes = np.fromiter((_feature_code(feature) for feature in features), dtype=np.int64, count=len(features))
    signed = np.asarray(weights, dtype=np.float32) * np.where(codes & 1, np.float32(1.0), np.float32(-1.0))
    matrix = scipy.sparse.csr_matrix(
        (signed, (np.repeat(np.arange(len(rows)), counts), codes >> 1)),
        shape=(len(rows), CONTENT_FEATURE_BUCKETS),
        dtype=np.float32,
    )
    return normalize_rows(np.asarray(matrix @ projection, dtype=np.float32))


_feature_codes: dict[str, int] = {}
_FEATURE_CODES_KEPT = 1_000_000  # tokens repeat across a catalog: their hashes are kept (about 100 MB at most)


def _feature_code(feature: str) -> int:
    """The feature's bucket (shifted left) and sign (the low bit), hashed as `graph_app.embeddings._add` does."""
    code = _feature_codes.get(feature)
    if code is None:
        hashed = zlib.crc32(feature.encode())
        code = (hashed % CONTENT_FEATURE_BUCKETS) << 1 | (hashed >> 16) & 1
        if len(_feature_codes) >= _FEATURE_CODES_KEPT:
            _feature_codes.clear()
        _feature_codes[feature] = code
    return code


# Every statement below takes arrays (one round trip whatever the batch size). The lock comes first and in id
# order: what it finds existed before the write (created vs updated, and whether the item was in stock).
_LOCK_SQL = """
SELECT id, external_id, in_stock, price, embedding_source = 'collaborative', attributes::text, title, description,
       category, extract(epoch FROM created_at)
FROM graph_app_item WHERE external_id = ANY(%b::text[]) ORDER BY external_id FOR NO KEY UPDATE
"""

# A row the same as the one stored (a nightly feed sends most items unchanged) is not written again: no new row
# version, no new entry in the vector index; its updated_at stays.
_UPSERT_SQL = """
INSERT INTO graph_app_item AS item (external_id, title, description, category, price, in_stock, attributes,
                                    embedding, embedding_source, created_at, updated_at)
SELECT u.external_id, u.title, u.description, u.category, u.price, u.in_stock, u.attributes::jsonb,
       u.embedding::vector, 'content', now(), now()
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::numeric[], %b::bool[], %b::text[], %b::text[])
     AS u(external_id, title, description, category, price, in_stock, attributes, embedding)
ORDER BY u.external_id
ON CONFLICT (external_id) DO UPDATE SET
    title = excluded.title, description = excluded.description, category = excluded.category,
    price = excluded.price, in_stock = excluded.in_stock, attributes = excluded.attributes,
    embedding = CASE WHEN item.embedding_source = 'collaborative' THEN item.embedding ELSE excluded.embedding END,
    embedding_source = CASE WHEN item.embedding_source = 'collaborative' THEN item.embedding_source
                            ELSE 'content' END,
    updated_at = excluded.updated_at
WHERE (item.title, item.description, item.category, item.price, item.in_stock, item.attributes)
      IS DISTINCT FROM (excluded.title, excluded.description, excluded.category, excluded.price, excluded.in_stock,
                        excluded.attributes)
   OR (item.embedding_source <> 'collaborative'
       AND (item.embedding_source <> 'content' OR item.embedding IS DISTINCT FROM excluded.embedding))
RETURNING item.id, item.external_id, item.embedding_source = 'collaborative', extract(epoch FROM item.created_at)
"""

# As for upserts, a patch that changes nothing writes nothing.
_PATCH_SQL = """
UPDATE graph_app_item AS item SET
    price = p.price, in_stock = p.in_stock, attributes = p.attributes::jsonb,
    embedding = coalesce(p.embedding::vector, item.embedding),
    embedding_source = CASE WHEN p.embedding IS NULL THEN item.embedding_source ELSE 'content' END,
    updated_at = now()
FROM unnest(%b::bigint[], %b::numeric[], %b::bool[], %b::text[], %b::text[]) AS p(id, price, in_stock, attributes,
                                                                                 embedding)
WHERE item.id = p.id
  AND ((item.price, item.in_stock, item.attributes) IS DISTINCT FROM (p.price, p.in_stock, p.attributes::jsonb)
       OR item.embedding IS DISTINCT FROM coalesce(p.embedding::vector, item.embedding))
RETURNING item.id
"""


def _links_replace(cursor: Any, *, rows: Sequence[ItemInput], item_pks: dict[str, int]) -> set[int]:
    """Upsert the rows' entities and replace the items' links with theirs (an entity named twice in one item: the
    last reference counts); the items whose links changed."""
    names: dict[tuple[str, str], str] = {}
    for row in rows:
        for ref in row.entities:
            key = (ref.kind, ref.external_id)
            names[key] = ref.name or names.get(key, "")
    entity_pks = _entities_upsert(cursor, names=names) if names else {}
    links: dict[tuple[int, int], float] = {}
    for row in rows:
        for ref in row.entities:
            links[(item_pks[row.external_id], entity_pks[(ref.kind, ref.external_id)])] = float(ref.weight)
    arrays = [[item for item, _ in links], [entity for _, entity in links], list(links.values())]
    # Only the links that differ are deleted and inserted: an unchanged item's links are not rewritten.
    cursor.execute(_LINKS_DELETE_SQL, [list(item_pks.values()), *arrays])
    relinked = {item_pk for (item_pk,) in cursor.fetchall()}
    if links:
        cursor.execute(_LINKS_INSERT_SQL, arrays)
        relinked.update(item_pk for (item_pk,) in cursor.fetchall())
    return relinked


_LINKS_DELETE_SQL = """
DELETE FROM graph_app_itementity AS link WHERE link.item_id = ANY(%b::bigint[]) AND NOT EXISTS (
    SELECT FROM unnest(%b::bigint[], %b::bigint[], %b::float8[]) AS kept(item_id, entity_id, weight)
    WHERE kept.item_id = link.item_id AND kept.entity_id = link.entity_id AND kept.weight = link.weight
)
RETURNING link.item_id
"""

_LINKS_INSERT_SQL = """
INSERT INTO graph_app_itementity (item_id, entity_id, weight)
SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::float8[]) ORDER BY 1, 2
ON CONFLICT (item_id, entity_id) DO NOTHING
RETURNING item_id
"""


_ENTITIES_UPSERT_SQL = """
WITH input AS (SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]) AS u(kind, external_id, name)),
written AS (
    INSERT INTO graph_app_entity AS entity (kind, external_id, name)
    SELECT kind, external_id, name FROM input ORDER BY kind, external_id
    ON CONFLICT (kind, external_id) DO UPDATE SET name = excluded.name
    WHERE excluded.name <> '' AND entity.name <> excluded.name
    RETURNING entity.id, entity.kind, entity.external_id
)
SELECT id, kind, external_id FROM written
UNION ALL
SELECT entity.id, entity.kind, entity.external_id FROM graph_app_entity entity JOIN input USING (kind, external_id)
"""


def _entities_upsert(cursor: Any, *, names: dict[tuple[str, str], str]) -> dict[tuple[str, str], int]:
    """Entities by (kind, id), created when new; a name given replaces the stored one. Only changed entities are
    written: a brand shared by thousands of items is not rewritten (nor locked) by every batch."""
    ordered = sorted(names)
    cursor.execute(
        _ENTITIES_UPSERT_SQL,
        [[kind for kind, _ in ordered], [external_id for _, external_id in ordered], [names[key] for key in ordered]],
    )
    pks = {(kind, external_id): pk for pk, kind, external_id in cursor.fetchall()}
    unseen = [key for key in ordered if key not in pks]
    if unseen:
        # Created by a concurrent transaction after this statement's snapshot: visible to a new statement.
        cursor.execute(
            "SELECT e.id, e.kind, e.external_id FROM graph_app_entity e "
            "JOIN unnest(%b::text[], %b::text[]) AS u(kind, external_id) USING (kind, external_id)",
            [[kind for kind, _ in unseen], [external_id for _, external_id in unseen]],
        )
        pks.update({(kind, external_id): pk for pk, kind, external_id in cursor.fetchall()})
    return pks


def _entities_read(cursor: Any, *, pks: list[int]) -> dict[int, tuple[EntityRef, ...]]:
    if not pks:
        return {}
    cursor.execute(
        "SELECT l.item_id, e.kind, e.external_id, e.name, l.weight FROM graph_app_itementity l "
        "JOIN graph_app_entity e ON e.id = l.entity_id WHERE l.item_id = ANY(%b::bigint[]) ORDER BY l.id",
        [pks],
    )
    refs: dict[int, list[EntityRef]] = {}
    for item_pk, kind, external_id, name, weight in cursor.fetchall():
        refs.setdefault(item_pk, []).append(EntityRef(kind=kind, external_id=external_id, name=name, weight=weight))
    return {pk: tuple(item_refs) for pk, item_refs in refs.items()}


def _embeddings_read(cursor: Any, *, pks: list[int]) -> dict[int, np.ndarray]:
    """The learned embeddings kept by an upsert (Redis gets what PostgreSQL holds)."""
    if not pks:
        return {}
    cursor.execute("SELECT id, embedding::text FROM graph_app_item WHERE id = ANY(%b::bigint[])", [pks])
    return {pk: np.asarray(orjson.loads(text), dtype=np.float32) for pk, text in cursor.fetchall()}


def _vector_literal(vector: np.ndarray) -> str:
    # orjson writes each float32 in its shortest form that reads back as the same float32 (Redis receives the
    # exact bytes), six times faster than formatting each value in Python.
    return orjson.dumps(np.ascontiguousarray(vector, dtype=np.float32), option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _attributes_merge(current: Any, patch: dict[str, Any]) -> dict[str, Any]:
    merged = dict(current) if isinstance(current, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _patch_compose(earlier: ItemPatch | None, later: ItemPatch) -> ItemPatch:
    """One patch doing what `earlier` then `later` do (a top-level merge patch composes by key)."""
    if earlier is None:
        return later
    return ItemPatch(
        external_id=later.external_id,
        fields=earlier.fields | later.fields,
        price=later.price if "price" in later.fields else earlier.price,
        in_stock=later.in_stock if "in_stock" in later.fields else earlier.in_stock,
        attributes={**earlier.attributes, **later.attributes},
    )


@contextmanager
def _cursor() -> Iterator[psycopg.Cursor[Any]]:
    """A cursor on Django's connection (in its transaction) that binds parameters on the server, in binary: a
    batch's arrays cost a few milliseconds to send instead of tens quoted into the SQL text (Django's cursors bind
    on the client). Its errors are psycopg's, not Django's."""
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def _decimal(value: Any) -> Decimal | None:
    # Binary arrays take one type: a price given as int or float becomes a Decimal, as the model field would make it.
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


@contextmanager
def _check_violations() -> Iterator[None]:
    """The database's check constraints (price >= 0, a non-empty id) stay the guard: a row breaking one refuses the
    whole call with a 400 naming the field, never a 500."""
    try:
        yield
    except (IntegrityError, psycopg.IntegrityError) as error:
        message = str(error)
        field_name = "price" if "price" in message else "item_id" if "external_id" in message else "item"
        raise ApplicationError(
            f"{field_name}: refused by the catalog's constraints.", errors={field_name: [message.splitlines()[0]]}
        ) from error
