"""The catalog's distinct values, for the console's rule builder: suggestions as a merchandiser types, and whether a
value a rule names exists (with the spellings that differ only in case); and the names of users' traits, for a
rule's audience.

Every read is bounded on a million-item catalog, without an index of its own: categories walk the category index
one distinct value at a time (a loose index scan, never the items), brands are entities, and attribute names,
attribute values and price points come from the newest items (the `created_at` index), so a suggestion may miss
what only old items have; whether a value exists is an exact check. Trait names come the same way from the newest
users (the primary key's index), so a trait only old users have is not suggested.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Count

from graph_app.models import Item, ItemEntity

SUGGESTIONS_MAX = 20
# Distinct categories a search walks at most: past it, later categories (in index order) are not suggested.
CATEGORY_WALK_MAX = 10_000
# Attribute names, attribute values and prices are suggested from this many of the newest items.
RECENT_ITEMS_SAMPLE = 20_000
# Trait names are suggested from this many of the newest users.
RECENT_USERS_SAMPLE = 20_000
# An attribute's other spellings are read from at most this many items that have one.
SPELLING_ITEMS_MAX = 200

_CATEGORY_WALK_SQL = """
WITH RECURSIVE walk(category, steps) AS (
    (SELECT category, 1 FROM graph_app_item ORDER BY category LIMIT 1)
    UNION ALL
    SELECT (SELECT i.category FROM graph_app_item i WHERE i.category > walk.category ORDER BY i.category LIMIT 1),
           walk.steps + 1
    FROM walk WHERE walk.category IS NOT NULL AND walk.steps < %(walk_max)s
)
SELECT category FROM walk WHERE category IS NOT NULL AND lower(category) LIKE %(pattern)s ESCAPE '\\'
LIMIT %(limit)s
"""

_BRANDS_SQL = """
SELECT e.external_id FROM graph_app_entity e
WHERE e.kind = 'brand' AND lower(e.external_id) LIKE %(pattern)s ESCAPE '\\'
    AND EXISTS (SELECT 1 FROM graph_app_itementity link WHERE link.entity_id = e.id)
ORDER BY e.external_id LIMIT %(limit)s
"""

_RECENT = "(SELECT attributes, price FROM graph_app_item ORDER BY created_at DESC LIMIT %(sample)s) recent"

_ATTRIBUTE_NAMES_SQL = f"""
SELECT attribute.key, array_agg(DISTINCT jsonb_typeof(attribute.value))
FROM {_RECENT}, jsonb_each(recent.attributes) attribute
WHERE lower(attribute.key) LIKE %(pattern)s ESCAPE '\\'
GROUP BY attribute.key ORDER BY attribute.key LIMIT %(limit)s
"""

_ATTRIBUTE_VALUES_SQL = f"""
SELECT DISTINCT recent.attributes -> %(name)s FROM {_RECENT}
WHERE jsonb_typeof(recent.attributes -> %(name)s) IN ('string', 'number', 'boolean')
    AND lower(recent.attributes ->> %(name)s) LIKE %(pattern)s ESCAPE '\\'
LIMIT %(limit)s
"""

# Users' traits are a JSON object (`shopper_traits_merge`); the filter keeps jsonb_each from failing on another one.
_TRAIT_NAMES_SQL = """
SELECT trait.key, array_agg(DISTINCT jsonb_typeof(trait.value))
FROM (
    SELECT traits FROM graph_app_shopper WHERE jsonb_typeof(traits) = 'object' ORDER BY id DESC LIMIT %(sample)s
) recent, jsonb_each(recent.traits) trait
WHERE lower(trait.key) LIKE %(pattern)s ESCAPE '\\'
GROUP BY trait.key ORDER BY trait.key LIMIT %(limit)s
"""

_PRICE_POINTS_SQL = f"""
SELECT percentile_disc(ARRAY[0, 0.25, 0.5, 0.75, 1]) WITHIN GROUP (ORDER BY recent.price)
FROM {_RECENT} WHERE recent.price IS NOT NULL
"""

_CATEGORIES_MISSING_SQL = """
SELECT wanted FROM unnest(%(values)s::text[]) WITH ORDINALITY AS given(wanted, position)
WHERE NOT EXISTS (SELECT 1 FROM graph_app_item i WHERE i.category = wanted)
ORDER BY position
"""

_BRANDS_MISSING_SQL = """
SELECT wanted FROM unnest(%(values)s::text[]) WITH ORDINALITY AS given(wanted, position)
WHERE NOT EXISTS (
    SELECT 1 FROM graph_app_entity e JOIN graph_app_itementity link ON link.entity_id = e.id
    WHERE e.kind = 'brand' AND e.external_id = wanted
)
ORDER BY position
"""

_BRAND_SPELLINGS_SQL = """
SELECT e.external_id FROM graph_app_entity e
WHERE e.kind = 'brand' AND lower(e.external_id) = ANY(%(lowered)s)
    AND EXISTS (SELECT 1 FROM graph_app_itementity link WHERE link.entity_id = e.id)
ORDER BY e.external_id LIMIT %(limit)s
"""

# A scalar subquery per value, not NOT EXISTS: the planner would turn that into an anti-join reading every item,
# where this stops at the first item that has the value.
_ATTRIBUTE_VALUES_MISSING_SQL = """
SELECT wanted FROM jsonb_array_elements(%(values)s::jsonb) WITH ORDINALITY AS given(wanted, position)
WHERE (SELECT 1 FROM graph_app_item i WHERE i.attributes -> %(name)s = wanted LIMIT 1) IS NULL
ORDER BY position
"""

# Not DISTINCT, which would read every item: the first items found that spell it so, made distinct here.
_ATTRIBUTE_SPELLINGS_SQL = """
SELECT i.attributes -> %(name)s FROM graph_app_item i
WHERE lower(i.attributes ->> %(name)s) = ANY(%(lowered)s) LIMIT %(limit)s
"""


@dataclass(frozen=True)
class AttributeName:
    """An item attribute's name, or a user trait's."""

    name: str
    # What its values are among the newest items (or users): "boolean", "number", "string", or "mixed" (several of
    # these, or lists and objects, or null).
    kind: str


@dataclass(frozen=True)
class PricePoints:
    """Prices among the newest items: the lowest, the quartiles and the highest (for ranges a merchandiser picks)."""

    lowest: float
    lower_quartile: float
    median: float
    upper_quartile: float
    highest: float


def _prefix_pattern(prefix: str) -> str:
    """A case-insensitive LIKE pattern for values starting with `prefix` (its wildcards taken literally)."""
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


def _rows(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
    return rows


def categories_search(*, prefix: str = "", limit: int = SUGGESTIONS_MAX) -> list[str]:
    """Categories items have that start with `prefix` (any case), in index order."""
    params = {"walk_max": CATEGORY_WALK_MAX, "pattern": _prefix_pattern(prefix), "limit": limit}
    return [category for (category,) in _rows(_CATEGORY_WALK_SQL, params)]


def brands_search(*, prefix: str = "", limit: int = SUGGESTIONS_MAX) -> list[str]:
    """Brands (entities of kind brand) that at least one item has, starting with `prefix` (any case)."""
    return [brand for (brand,) in _rows(_BRANDS_SQL, {"pattern": _prefix_pattern(prefix), "limit": limit})]


def _names(sql: str, params: dict[str, Any]) -> list[AttributeName]:
    found = []
    for name, types in _rows(sql, params):
        kinds = set(types)
        kind = kinds.pop() if len(kinds) == 1 and kinds <= {"boolean", "number", "string"} else "mixed"
        found.append(AttributeName(name=name, kind=kind))
    return found


def attribute_names_search(*, prefix: str = "", limit: int = SUGGESTIONS_MAX) -> list[AttributeName]:
    """Attribute names of the newest items starting with `prefix` (any case), with the kind of their values."""
    return _names(
        _ATTRIBUTE_NAMES_SQL, {"sample": RECENT_ITEMS_SAMPLE, "pattern": _prefix_pattern(prefix), "limit": limit}
    )


def trait_names_search(*, prefix: str = "", limit: int = SUGGESTIONS_MAX) -> list[AttributeName]:
    """Trait names of the newest users starting with `prefix` (any case), with the kind of their values: what a
    rule's audience can name (`traits.<name>`)."""
    return _names(_TRAIT_NAMES_SQL, {"sample": RECENT_USERS_SAMPLE, "pattern": _prefix_pattern(prefix), "limit": limit})


def attribute_values_search(*, name: str, prefix: str = "", limit: int = SUGGESTIONS_MAX) -> list[Any]:
    """Values (strings, numbers, booleans, as stored) of `attributes.<name>` among the newest items, starting
    with `prefix` (any case)."""
    params = {"sample": RECENT_ITEMS_SAMPLE, "name": name, "pattern": _prefix_pattern(prefix), "limit": limit}
    values = [_json(value) for (value,) in _rows(_ATTRIBUTE_VALUES_SQL, params)]
    return sorted(values, key=lambda value: (str(type(value)), value))


def price_points() -> PricePoints | None:
    """The spread of prices among the newest items; None when none has a price."""
    (points,) = _rows(_PRICE_POINTS_SQL, {"sample": RECENT_ITEMS_SAMPLE})[0]
    if not points or points[0] is None:
        return None
    return PricePoints(*(float(point) for point in points))


def categories_missing(*, values: Sequence[str]) -> list[str]:
    """Which of these categories no item has (exact, case included), in their order: one index probe each."""
    return [value for (value,) in _rows(_CATEGORIES_MISSING_SQL, {"values": list(values)})]


def category_spellings(*, values: Sequence[str]) -> list[str]:
    """The categories items have that equal one of `values` ignoring case (bounded like `categories_search`)."""
    lowered = {value.lower() for value in values}
    params = {"walk_max": CATEGORY_WALK_MAX, "pattern": "%", "limit": CATEGORY_WALK_MAX}
    return [category for (category,) in _rows(_CATEGORY_WALK_SQL, params) if category.lower() in lowered]


def brands_missing(*, values: Sequence[str]) -> list[str]:
    """Which of these brands no item has (exact, case included)."""
    return [value for (value,) in _rows(_BRANDS_MISSING_SQL, {"values": list(values)})]


def brand_spellings(*, values: Sequence[str]) -> list[str]:
    """The brands items have that equal one of `values` ignoring case."""
    params = {"lowered": sorted({value.lower() for value in values}), "limit": SUGGESTIONS_MAX}
    return [brand for (brand,) in _rows(_BRAND_SPELLINGS_SQL, params)]


def attribute_values_missing(*, name: str, values: Sequence[Any]) -> list[Any]:
    """Which of these values (as JSON: "5" and 5 differ) no item has for `attributes.<name>`. Exact: a value some
    item has is found at that item, one no item has costs a scan of the catalog (about a second at a million)."""
    params = {"name": name, "values": json.dumps(list(values))}
    return [_json(value) for (value,) in _rows(_ATTRIBUTE_VALUES_MISSING_SQL, params)]


def attribute_spellings(*, name: str, values: Sequence[Any]) -> list[Any]:
    """The values items have for `attributes.<name>` whose text equals one of `values`' ignoring case ("Red" for
    "red", the text "5" for the number 5), from the first items found: a scan of the catalog when none has one."""
    lowered = sorted({_text(value).lower() for value in values})
    params = {"name": name, "lowered": lowered, "limit": SPELLING_ITEMS_MAX}
    found: dict[str, Any] = {}  # by JSON text: true and 1 are different values
    for (value,) in _rows(_ATTRIBUTE_SPELLINGS_SQL, params):
        decoded = _json(value)
        found.setdefault(json.dumps(decoded), decoded)
    return list(found.values())


def _json(value: Any) -> Any:
    """A jsonb column as psycopg returns it (already decoded, or text)."""
    return json.loads(value) if isinstance(value, str) else value


def _text(value: Any) -> str:
    """A JSON scalar as PostgreSQL's `->>` writes it."""
    return value if isinstance(value, str) else json.dumps(value)


def category_item_counts(*, values: Sequence[str]) -> dict[str, int]:
    """How many items each of these categories has (the category index; a big category takes a while to count)."""
    rows = Item.objects.filter(category__in=values).values_list("category").annotate(items=Count("pk"))
    return dict(rows.order_by())


def brand_item_counts(*, values: Sequence[str]) -> dict[str, int]:
    """How many items each of these brands has."""
    links = ItemEntity.objects.filter(entity__kind="brand", entity__external_id__in=values)
    return dict(links.values_list("entity__external_id").annotate(items=Count("pk")).order_by())
