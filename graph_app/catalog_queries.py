"""The catalog queries behind Score's retrieval sources: Graph's tables (items, shoppers' vectors, popularity), so
Graph owns the SQL and runs it; Score calls these in its own threads under its own deadlines and caches the rows
(one round trip per source, as before). Each returns (item id, score) rows. The SQL text stays public for the
benchmarks that time the queries themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.db import connection

Rows = list[tuple[str, float]]

SIMILAR_TO_RECENT_SQL = """
SELECT external_id, 1 - (embedding <=> (SELECT avg(embedding) FROM graph_app_item
                                        WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL))
FROM graph_app_item
WHERE in_stock AND embedding IS NOT NULL AND NOT (external_id = ANY(%(recent)s))
ORDER BY embedding <=> (SELECT avg(embedding) FROM graph_app_item
                        WHERE external_id = ANY(%(recent)s) AND embedding IS NOT NULL)
LIMIT %(k)s
"""
POPULAR_FROM_CATALOG_SQL = """
SELECT p.item_id, p.score FROM graph_app_itempopularity p JOIN graph_app_item i ON i.external_id = p.item_id
WHERE i.in_stock ORDER BY p.score DESC LIMIT %(k)s
"""
# Without enough popular items (a platform before its first refresh), in-stock items make up the shelf.
IN_STOCK_FROM_CATALOG_SQL = """
SELECT external_id, 0.0 FROM graph_app_item
WHERE in_stock AND NOT (external_id = ANY(%(known)s)) ORDER BY external_id LIMIT %(k)s
"""
USER_VECTOR_SQL = """
SELECT external_id, 1 - (embedding <=> (SELECT embedding FROM graph_app_shopper WHERE external_id = %(user)s))
FROM graph_app_item
WHERE in_stock AND embedding IS NOT NULL AND NOT (external_id = ANY(%(recent)s))
ORDER BY embedding <=> (SELECT embedding FROM graph_app_shopper WHERE external_id = %(user)s)
LIMIT %(k)s
"""
CATEGORY_POPULAR_SQL = """
SELECT p.item_id, p.score FROM graph_app_itempopularity p JOIN graph_app_item i ON i.external_id = p.item_id
WHERE p.category = %(category)s AND i.category = %(category)s AND i.in_stock AND p.score > 0
ORDER BY p.score DESC LIMIT %(k)s
"""
FRESH_SQL = """
SELECT external_id, extract(epoch FROM created_at)::float8 FROM graph_app_item
WHERE in_stock AND created_at > now() - make_interval(days => %(days)s) ORDER BY created_at DESC LIMIT %(k)s
"""
SIMILAR_TO_ITEM_SQL = """
SELECT external_id, 1 - (embedding <=> (SELECT embedding FROM graph_app_item WHERE external_id = %(item)s))
FROM graph_app_item
WHERE in_stock AND embedding IS NOT NULL AND external_id <> %(item)s
ORDER BY embedding <=> (SELECT embedding FROM graph_app_item WHERE external_id = %(item)s)
LIMIT %(k)s
"""


def similar_to_recent_rows(*, recent: Sequence[str], k: int) -> Rows:
    """In-stock items nearest the mean embedding of `recent`, best first."""
    return _sorted(_rows(SIMILAR_TO_RECENT_SQL, {"recent": list(recent), "k": k}))


def user_vector_rows(*, user_key: str, k: int) -> Rows:
    """In-stock items nearest the shopper's vector, best first."""
    return _sorted(_rows(USER_VECTOR_SQL, {"user": user_key, "recent": [], "k": k}))


def category_popular_rows(*, category: str, k: int) -> Rows:
    """The category's best sellers in stock, by popularity."""
    return _rows(CATEGORY_POPULAR_SQL, {"category": category, "k": k})


def fresh_rows(*, days: int, k: int) -> Rows:
    """The newest in-stock items of the last `days`, with their creation time (epoch seconds) as the score."""
    return _rows(FRESH_SQL, {"days": days, "k": k})


def popular_from_catalog_rows(*, k: int) -> Rows:
    """The best sellers in stock by PostgreSQL's popularity, topped up with other in-stock items (a platform before
    its first popularity refresh) to `k`."""
    rows = _rows(POPULAR_FROM_CATALOG_SQL, {"k": k})
    if len(rows) < k:
        rows += _rows(IN_STOCK_FROM_CATALOG_SQL, {"k": k - len(rows), "known": [item for item, _ in rows]})
    return rows


def similar_to_item_rows(*, item_id: str, k: int) -> Rows:
    """In-stock items nearest the item's embedding, best first."""
    with connection.cursor() as cursor:
        cursor.execute(SIMILAR_TO_ITEM_SQL, {"item": item_id, "k": k})
        rows = [(other_id, float(score)) for other_id, score in cursor.fetchall() if score is not None]
    return _sorted(rows)


def _rows(sql: str, params: dict[str, Any]) -> Rows:
    """The query's (item, score) rows with a score: a cosine to a zero vector (a shopper the model learnt nothing
    of) is NaN, which JSON caches as null."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [(item_id, float(score)) for item_id, score in rows if score is not None and math.isfinite(score)]


def _sorted(rows: Rows) -> Rows:
    rows.sort(key=lambda row: row[1], reverse=True)  # relaxed iterative scans may return rows slightly out of order
    return rows
