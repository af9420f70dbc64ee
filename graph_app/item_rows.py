"""The batch endpoints' rows read without DRF: a fast path for rows that are plainly valid.

DRF's serializers cost about a millisecond a row (as much as the whole bulk write), so a batch reads each row here
first: a row that passes every check below becomes its ItemInput or ItemPatch directly, with exactly the values
the serializer would give; anything else (an error, or a value merely unusual: a price written 1e2, a title with
surrounding spaces) returns None, and the serializer decides and names the errors. The checks may only be
stricter than the serializer's, never looser (tests/graph_app/test_item_rows.py compares the two).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, TypeGuard

from graph_app.catalog_bulk import PATCH_FIELDS, ItemPatch
from graph_app.services import EntityRef, ItemInput
from personalization.process_caches import process_cache
from personalization.validation import (
    EXTERNAL_ID_MAX_LENGTH,
    JSON_INT_MAX,
    JSON_INT_MIN,
    JsonLimitExceeded,
    json_limits_check,
)

# The serializers' limits (graph_app.apis.ItemInputSerializer, EntityRefSerializer, ItemPatchRowSerializer).
TITLE_MAX, DESCRIPTION_MAX, CATEGORY_MAX = 500, 20000, 200
KIND_MAX, ENTITY_NAME_MAX, ENTITIES_MAX = 50, 300, 100
WEIGHT_MIN, WEIGHT_MAX = 0.0001, 1000.0
_PRICE = re.compile(r"\d{1,10}(?:\.\d{1,2})?")  # max_digits 12, decimal_places 2, not negative
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_CENT = Decimal("0.01")
_ROW_FIELDS = frozenset({"item_id", "title", "description", "category", "price", "in_stock", "attributes", "entities"})
_PATCH_ROW_FIELDS = PATCH_FIELDS | {"item_id"}


def item_row_read(row: Any) -> ItemInput | None:
    """A batch upsert row as ItemBatchRowSerializer would read it, or None to let the serializer decide."""
    if not isinstance(row, dict) or not row.keys() <= _ROW_FIELDS:
        return None
    item_id, title = row.get("item_id"), row.get("title")
    description, category = row.get("description", ""), row.get("category", "")
    if not _text(item_id, EXTERNAL_ID_MAX_LENGTH, blank=False) or not _text(title, TITLE_MAX, blank=False):
        return None
    if not _text(description, DESCRIPTION_MAX, blank=True) or not _text(category, CATEGORY_MAX, blank=True):
        return None
    plain_price, price = _price(row["price"]) if "price" in row else (True, None)
    in_stock = row.get("in_stock", True)
    attributes = row.get("attributes", {})
    entities = _entities(row.get("entities", []))
    if not plain_price or not isinstance(in_stock, bool) or not _attributes_ok(attributes) or entities is None:
        return None
    return ItemInput(
        external_id=item_id,
        title=title,
        description=description,
        category=category,
        price=price,
        in_stock=in_stock,
        attributes=attributes,
        entities=entities,
    )


def patch_row_read(row: Any) -> ItemPatch | None:
    """A batch patch row as ItemPatchRowSerializer would read it, or None to let the serializer decide."""
    if not isinstance(row, dict) or not row.keys() <= _PATCH_ROW_FIELDS:
        return None
    fields = frozenset(row.keys() & PATCH_FIELDS)
    item_id = row.get("item_id")
    if not fields or not _text(item_id, EXTERNAL_ID_MAX_LENGTH, blank=False):
        return None
    plain_price, price = _price(row["price"]) if "price" in row else (True, None)
    in_stock = row.get("in_stock", True)
    attributes = row.get("attributes", {})
    if not plain_price or not isinstance(in_stock, bool) or not _attributes_ok(attributes):
        return None
    return ItemPatch(external_id=item_id, fields=fields, price=price, in_stock=in_stock, attributes=attributes)


def _text(value: Any, max_length: int, *, blank: bool) -> TypeGuard[str]:
    """A string the serializer's StrictCharField keeps as it is: not trimmed, no NUL, no lone surrogate."""
    if not isinstance(value, str) or len(value) > max_length or (not value and not blank):
        return False
    if value and value.strip() != value:
        return False
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode()  # a lone surrogate cannot be encoded
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _price(value: Any) -> tuple[bool, Decimal | None]:
    """(plain, the price as DecimalField(max_digits=12, decimal_places=2, min_value=0) gives it); not plain: let
    the serializer decide."""
    if value is None:
        return True, None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False, None
    text = value if isinstance(value, str) else str(value)
    price = _prices.get(text)
    if price is None:
        if not _PRICE.fullmatch(text):
            return False, None
        if len(_prices) >= PRICES_KEPT:
            _prices.clear()
        price = _prices[text] = Decimal(text).quantize(_CENT)
    return True, price


# Prices read, by their text: a catalog repeats its prices (Decimals are immutable, so they can be shared).
_prices: dict[str, Decimal] = {}
PRICES_KEPT = 20_000


@process_cache("graph.item_prices")
def _prices_forget() -> None:
    _prices.clear()


def _attributes_ok(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    flat = _flat_attributes_ok(value)
    if flat is not None:
        return flat
    try:
        json_limits_check(value)
    except JsonLimitExceeded:
        return False
    return json_storable(value)


def _flat_attributes_ok(value: dict[Any, Any]) -> bool | None:
    """The common case, attributes of text, flags and numbers: the JSON limits and what jsonb stores, checked in one
    pass (the text all at once). None when something is nested: the full check decides."""
    try:
        return _text_storable("".join(value) + "".join(value.values()))  # nothing but text: one join
    except TypeError:
        pass  # a flag or a number among them
    texts: list[str] = []
    for key, inner in value.items():
        kind = type(inner)
        if type(key) is not str:
            return None
        if kind is str:
            texts.append(inner)
        elif kind is int:
            if not JSON_INT_MIN <= inner <= JSON_INT_MAX:
                return False
        elif kind is float:
            if not (math.isfinite(inner) and JSON_INT_MIN <= inner <= JSON_INT_MAX):
                return False
        elif kind is not bool and inner is not None:
            return None
    return _text_storable("".join(value) + "".join(texts))


def json_storable(value: Any) -> bool:
    """No NUL and no lone surrogate anywhere (keys included): what jsonb can store. The serializers refuse NUL, not
    lone surrogates, which JSON's \\ud800 escapes can carry."""
    if isinstance(value, str):
        return _text_storable(value)
    if isinstance(value, dict):
        return all(_text_storable(key) and json_storable(inner) for key, inner in value.items())
    if isinstance(value, list):
        return all(json_storable(inner) for inner in value)
    return True


def _text_storable(value: str) -> bool:
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _entities(value: Any) -> tuple[EntityRef, ...] | None:
    if not isinstance(value, list) or len(value) > ENTITIES_MAX:
        return None
    refs = []
    for entry in value:
        ref = _entity_ref(entry)
        if ref is None:
            return None
        refs.append(ref)
    return tuple(refs)


_ENTITY_FIELDS = frozenset({"kind", "id", "name", "weight"})
# Entities plainly valid, by their fields: a catalog names the same brands over and over.
_entity_refs: dict[tuple[str, str, str, int | float], EntityRef] = {}
ENTITY_REFS_KEPT = 20_000


@process_cache("graph.entity_refs")
def _entity_refs_forget() -> None:
    _entity_refs.clear()


def _entity_ref(entry: Any) -> EntityRef | None:
    if not isinstance(entry, dict) or not entry.keys() <= _ENTITY_FIELDS:
        return None
    kind, external_id, name = entry.get("kind"), entry.get("id"), entry.get("name", "")
    weight = entry.get("weight", 1.0)
    if not (type(kind) is str and type(external_id) is str and type(name) is str and type(weight) in (int, float)):
        return None  # the serializer decides
    key = (kind, external_id, name, weight)
    ref = _entity_refs.get(key)
    if ref is None:
        ref = _entity_ref_read(kind, external_id, name, weight)
        if ref is not None:
            if len(_entity_refs) >= ENTITY_REFS_KEPT:
                _entity_refs.clear()
            _entity_refs[key] = ref
    return ref


def _entity_ref_read(kind: str, external_id: str, name: str, weight: int | float) -> EntityRef | None:
    if not _text(kind, KIND_MAX, blank=False) or not _SLUG.fullmatch(kind):
        return None
    if not _text(external_id, EXTERNAL_ID_MAX_LENGTH, blank=False) or not _text(name, ENTITY_NAME_MAX, blank=True):
        return None
    if not WEIGHT_MIN <= weight <= WEIGHT_MAX:
        return None
    return EntityRef(kind=kind, external_id=external_id, name=name, weight=float(weight))
