"""The catalog queries behind Score's retrieval sources: Graph's tables (items, shoppers' vectors, popularity), so
Graph owns the SQL; Score runs each in its own thread under its own deadline and caches the rows (one round trip
per source, as before). Each returns (item id, score) rows; `%(name)s` parameters.
"""

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
