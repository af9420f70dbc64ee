"""Catalog writes in bulk: upsert, partial update and delete of many items, a few SQL statements per call.

The one write path of the catalog: the single-item services (`item_upsert`, `item_delete`) are calls with one row.
Each call is one transaction; after it commits the online catalog (Redis), the items' "similar_items" caches and
the live shelves hear of the whole call at once (`_CatalogChange.publish`).

Rows lock in `external_id` order, so two concurrent calls touching the same items wait instead of deadlocking.
"""

from __future__ import annotations

import functools
import logging
import struct
import weakref
import zlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import numpy as np
import orjson
import psycopg
import scipy.sparse
from django.db import DatabaseError, IntegrityError, connection, transaction
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types import TypeInfo

from graph_app.embeddings import _TOKEN, CONTENT_FEATURE_BUCKETS, normalize_rows
from graph_app.online import catalog_write, entity_keys, pack_static
from graph_app.services import EntityRef, ItemInput, content_projection
from personalization.cache import item_cache_invalidate_many
from personalization.errors import ApplicationError
from personalization.live_updates import catalog_changed
from personalization.process_caches import process_cache

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
        catalog_changed(changed=self.changed, appeared=self.appeared)


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
    with transaction.atomic(), _check_violations(), server_bound_cursor() as cursor:
        ids = [row.external_id for row in ordered]
        cursor.execute(_LOCK_SQL, [ids])
        found = {row.external_id: row for row in map(_Stored._make, cursor.fetchall())}
        # external id -> (pk, learned embedding, created at), of the rows found, then of those written.
        facts = {external_id: (row.pk, row.learned, float(row.created_at)) for external_id, row in found.items()}
        cursor.execute(_UPSERT_SQL, [_upserted_json(ordered), _vector_array(cursor, vectors)])
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
            change.entity_keys[row.external_id] = _entity_keys_of(row)
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
    with transaction.atomic(), _check_violations(), server_bound_cursor() as cursor:
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
    with transaction.atomic(), server_bound_cursor() as cursor:
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
    codes: list[int] = []
    weights: list[float] = []
    counts: list[int] = []
    for row in rows:
        before = len(codes)
        for text, weight, most in ((row.title, 1.0, None), (row.description, 0.5, 200)):
            if text.isascii():
                words: list[Any] = text.encode().translate(_ASCII_WORD_BYTES).split()[:most]
                codes += map(_ASCII_WORD_CODES.__getitem__, words)
            else:
                words = _TOKEN.findall(text.lower())[:most]
                codes += map(_WORD_CODES.__getitem__, words)
            weights += [weight] * len(words)
        if row.category:
            codes.append(_CATEGORY_CODES[row.category])
            weights.append(2.0)
        for ref in row.entities:
            codes.append(_ENTITY_CODES[ref.kind, ref.external_id])
            weights.append(2.0 * ref.weight)
        for key, value in row.attributes.items():
            if type(value) is str:
                codes.append(_ATTRIBUTE_CODES[key, value])
                weights.append(1.0)
            elif isinstance(value, str | int | float | bool):
                codes.append(_feature_code(f"attr:{key}:{str(value).lower()}"))
                weights.append(1.0)
        counts.append(len(codes) - before)
    coded = np.array(codes, dtype=np.int64)
    signed = np.asarray(weights, dtype=np.float32) * np.where(coded & 1, np.float32(1.0), np.float32(-1.0))
    # Row by row as built (a feature twice in a row stays two entries: the product adds them up, as _add does).
    starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
    matrix = scipy.sparse.csr_matrix(
        (signed, coded >> 1, starts), shape=(len(rows), CONTENT_FEATURE_BUCKETS), dtype=np.float32
    )
    return normalize_rows(np.asarray(matrix @ projection, dtype=np.float32))


def _feature_code(feature: str) -> int:
    """The feature's bucket (shifted left) and sign (the low bit), hashed as `graph_app.embeddings._add` does."""
    hashed = zlib.crc32(feature.encode())
    return (hashed % CONTENT_FEATURE_BUCKETS) << 1 | (hashed >> 16) & 1


class _FeatureCodes(dict[Hashable, int]):
    """Feature codes by what they are made of, computed on a miss: words, categories, brands and attribute values
    repeat across a catalog, and a dict hit costs less than building the feature's text and hashing it."""

    # Small enough to stay in the processor's cache: a catalog's unique words (model numbers) would otherwise grow
    # it into one where every lookup misses (measured: a tenth slower with 250,000).
    KEPT = 20_000

    def __init__(self, feature: Callable[[Any], str]) -> None:
        super().__init__()
        self.feature = feature

    def __missing__(self, key: Hashable) -> int:
        if len(self) >= self.KEPT:
            self.clear()
        code = self[key] = _feature_code(self.feature(key))
        return code


_WORD_CODES = _FeatureCodes(lambda word: "w:" + word)
_ASCII_WORD_CODES = _FeatureCodes(lambda word: "w:" + word.decode())
# ASCII text's bytes, lowercased, with every byte but a letter or digit a space: split, its words as _TOKEN finds
# them in the lowercased text, five times faster. (Other text may lowercase into ASCII letters: _TOKEN reads it.)
_ASCII_WORD_BYTES = bytes(byte | 0x20 if chr(byte).isascii() and chr(byte).isalnum() else 0x20 for byte in range(256))


_CATEGORY_CODES = _FeatureCodes(lambda category: "category:" + category.lower())
_ENTITY_CODES = _FeatureCodes(lambda ref: f"entity:{ref[0]}:{ref[1].lower()}")
_ATTRIBUTE_CODES = _FeatureCodes(lambda pair: f"attr:{pair[0]}:{pair[1].lower()}")


# Every statement below takes arrays (one round trip whatever the batch size). The lock comes first and in id
# order: what it finds existed before the write (created vs updated, and whether the item was in stock).
_LOCK_SQL = """
SELECT id, external_id, in_stock, price, embedding_source = 'collaborative', attributes::text, title, description,
       category, extract(epoch FROM created_at)::float8
FROM graph_app_item WHERE external_id = ANY(%b::text[]) ORDER BY external_id FOR NO KEY UPDATE
"""

# A row the same as the one stored (a nightly feed sends most items unchanged) is not written again: no new row
# version, no new entry in the vector index; its updated_at stays. The rows come as one JSON array of
# [id, title, description, category, price, in stock, attributes] (`_upserted_json`), their vectors as a vector[]
# in the same order.
_UPSERT_SQL = """
INSERT INTO graph_app_item AS item (external_id, title, description, category, price, in_stock, attributes,
                                    embedding, embedding_source, created_at, updated_at)
SELECT u.fields->>0, u.fields->>1, u.fields->>2, u.fields->>3, (u.fields->>4)::numeric, (u.fields->>5)::bool,
       u.fields->6, u.embedding, 'content', now(), now()
FROM ROWS FROM (jsonb_array_elements(%b::jsonb), unnest(%b::vector[])) AS u(fields, embedding)
ORDER BY 1
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
RETURNING item.id, item.external_id, item.embedding_source = 'collaborative',
          extract(epoch FROM item.created_at)::float8
"""


def _upserted_json(rows: Sequence[ItemInput]) -> str:
    """The rows as one JSON parameter: PostgreSQL reads it as fast as an array a column, and orjson writes it ten
    times faster than psycopg writes the arrays (in Python, element by element)."""
    fields = [
        [
            row.external_id,
            row.title,
            row.description,
            row.category,
            _price_text(row.price),
            row.in_stock,
            row.attributes,
        ]
        for row in rows
    ]
    return orjson.dumps(fields).decode()


def _price_text(value: Any) -> str | None:
    # Exactly as given (a price given as int or float as the model field would take it): numeric reads the text.
    return None if value is None else str(_decimal(value))


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
        item_pk = item_pks[row.external_id]
        for ref in row.entities:
            links[item_pk, entity_pks[ref.kind, ref.external_id]] = float(ref.weight)
    kept = orjson.dumps([[item, entity, weight] for (item, entity), weight in links.items()]).decode()
    # Only the links that differ are deleted and inserted: an unchanged item's links are not rewritten.
    cursor.execute(_LINKS_DELETE_SQL, [kept, list(item_pks.values())])
    relinked = {item_pk for (item_pk,) in cursor.fetchall()}
    if links:
        cursor.execute(_LINKS_INSERT_SQL, [kept])
        relinked.update(item_pk for (item_pk,) in cursor.fetchall())
    return relinked


# The links wanted: one JSON array of [item, entity, weight].
_LINKS_DELETE_SQL = """
WITH kept AS (
    SELECT (link->>0)::bigint AS item_id, (link->>1)::bigint AS entity_id, (link->>2)::float8 AS weight
    FROM jsonb_array_elements(%b::jsonb) AS link
)
DELETE FROM graph_app_itementity AS link WHERE link.item_id = ANY(%b::bigint[]) AND NOT EXISTS (
    SELECT FROM kept
    WHERE kept.item_id = link.item_id AND kept.entity_id = link.entity_id AND kept.weight = link.weight
)
RETURNING link.item_id
"""

_LINKS_INSERT_SQL = """
INSERT INTO graph_app_itementity (item_id, entity_id, weight)
SELECT (link->>0)::bigint, (link->>1)::bigint, (link->>2)::float8 FROM jsonb_array_elements(%b::jsonb) AS link
ORDER BY 1, 2
ON CONFLICT (item_id, entity_id) DO NOTHING
RETURNING item_id
"""


# Existing entities are read without a lock and only renamed ones written: concurrent writers (the importer's
# workers, API calls) share brands, and ON CONFLICT DO UPDATE locks every row it meets until commit, even one it
# leaves unchanged, so that they would wait for each other's whole transaction.
_ENTITIES_READ_SQL = """
SELECT e.id, e.kind, e.external_id, e.name FROM graph_app_entity e
JOIN unnest(%b::text[], %b::text[]) AS u(kind, external_id) USING (kind, external_id)
"""

_ENTITIES_INSERT_SQL = """
INSERT INTO graph_app_entity (kind, external_id, name)
SELECT * FROM unnest(%b::text[], %b::text[], %b::text[]) ORDER BY 1, 2
ON CONFLICT (kind, external_id) DO NOTHING
RETURNING id, kind, external_id, name
"""

_ENTITIES_RENAME_SQL = """
UPDATE graph_app_entity AS entity SET name = u.name FROM unnest(%b::bigint[], %b::text[]) AS u(id, name)
WHERE entity.id = u.id AND entity.name <> u.name
"""


def _entities_upsert(cursor: Any, *, names: dict[tuple[str, str], str]) -> dict[tuple[str, str], int]:
    """Entities by (kind, id), created when new; a name given replaces the stored one."""
    stored = _entities_stored(cursor, sorted(names))
    new = [key for key in sorted(names) if key not in stored]
    if new:
        cursor.execute(
            _ENTITIES_INSERT_SQL,
            [[kind for kind, _ in new], [external_id for _, external_id in new], [names[key] for key in new]],
        )
        stored.update({(kind, external_id): (pk, name) for pk, kind, external_id, name in cursor.fetchall()})
        # Created by a concurrent transaction (our insert waited for its commit): visible to a new statement.
        stored.update(_entities_stored(cursor, [key for key in new if key not in stored]))
    # In id order, as every writer renames: two renaming the same entities wait instead of deadlocking.
    renamed = sorted((pk, names[key]) for key, (pk, name) in stored.items() if names[key] not in ("", name))
    if renamed:
        cursor.execute(_ENTITIES_RENAME_SQL, [[pk for pk, _ in renamed], [name for _, name in renamed]])
    return {key: pk for key, (pk, _) in stored.items()}


def _entities_stored(cursor: Any, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, str]]:
    if not keys:
        return {}
    cursor.execute(_ENTITIES_READ_SQL, [[kind for kind, _ in keys], [external_id for _, external_id in keys]])
    return {(kind, external_id): (pk, name) for pk, kind, external_id, name in cursor.fetchall()}


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


def _entity_keys_of(row: ItemInput) -> str:
    """The online catalog's entity keys of the row, kept by its category and entities: a catalog repeats them."""
    found = _entity_keys_kept.get((row.category, row.entities))
    if found is None:
        if len(_entity_keys_kept) >= ENTITY_KEYS_KEPT:
            _entity_keys_kept.clear()
        found = _entity_keys_kept[row.category, row.entities] = entity_keys(
            category=row.category, entities=[(ref.kind, ref.external_id) for ref in row.entities]
        )
    return found


_entity_keys_kept: dict[tuple[str, tuple[EntityRef, ...]], str] = {}
ENTITY_KEYS_KEPT = 20_000


@process_cache("graph.entity_keys_kept")
def _entity_keys_kept_forget() -> None:
    _entity_keys_kept.clear()


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


class _VectorArray(bytes):
    """A vector[] in PostgreSQL's binary array format, its elements in pgvector's (dimensions, a reserved zero, then
    big-endian float4s)."""


class _VectorArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


_vector_types: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def _vector_array(cursor: psycopg.Cursor[Any], vectors: np.ndarray) -> _VectorArray:
    """The vectors as a binary vector[] parameter of `cursor`, made by numpy at once: PostgreSQL reads them as they
    are instead of parsing each one's 64 numbers from text (a tenth of a new item's insert)."""
    oids = _vector_types.get(cursor.connection)
    if oids is None:
        info = TypeInfo.fetch(cursor.connection, "vector")
        assert info is not None, "the vector extension is installed by the migrations"
        oids = _vector_types[cursor.connection] = (info.oid, info.array_oid)
    vector_oid, array_oid = oids
    cursor.adapters.register_dumper(_VectorArray, _vector_array_dumper(array_oid))  # this cursor only
    count, dimensions = vectors.shape
    elements = np.empty(
        count, dtype=[("size", ">i4"), ("dimensions", ">u2"), ("unused", ">u2"), ("values", ">f4", (dimensions,))]
    )
    elements["size"] = 4 + 4 * dimensions  # each element's bytes
    elements["dimensions"], elements["unused"], elements["values"] = dimensions, 0, vectors
    # One dimension, no nulls, the element type; its length, from 1.
    header = struct.pack(">iiiii", 1, 0, vector_oid, count, 1)
    return _VectorArray(header + elements.tobytes())


@functools.cache
def _vector_array_dumper(oid: int) -> type[Dumper]:
    return type("VectorArrayDumper", (_VectorArrayDumper,), {"oid": oid})


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
def server_bound_cursor() -> Iterator[psycopg.Cursor[Any]]:
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
