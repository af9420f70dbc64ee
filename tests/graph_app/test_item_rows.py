"""The batch rows' fast path (graph_app.item_rows) against the serializers it stands in for: every row it reads,
the serializer reads the same; rows it leaves to the serializer include all the invalid ones."""

from __future__ import annotations

from decimal import Decimal

import pytest

from graph_app.apis import ItemBatchRowSerializer, ItemPatchRowSerializer
from graph_app.item_rows import item_row_read, patch_row_read

ROW = {
    "item_id": "sku-1",
    "title": "Red mug",
    "description": "A mug with red spots",
    "category": "kitchen",
    "price": "4.5",
    "in_stock": False,
    "attributes": {"colour": "red", "size": 3, "tags": ["a", {"b": None}]},
    "entities": [{"kind": "brand", "id": "acme", "name": "Acme"}, {"kind": "tag", "id": "red", "weight": 2}],
}

PLAIN = [
    ROW,
    {"item_id": "sku-2", "title": "Bare"},
    {**ROW, "price": 12, "entities": []},
    {**ROW, "price": 0.5},
    {**ROW, "price": None},
    {**ROW, "price": "9999999999.99"},
    {**ROW, "title": "Tasse à café ☕", "description": ""},
]
UNUSUAL = [  # each left to the serializer (valid or not)
    {**ROW, "price": "-1"},
    {**ROW, "price": "1.234"},
    {**ROW, "price": "1e2"},
    {**ROW, "price": "99999999999"},
    {**ROW, "price": True},
    {**ROW, "price": float("nan")},
    {**ROW, "title": ""},
    {**ROW, "title": " padded "},
    {**ROW, "title": "x" * 501},
    {**ROW, "title": "nul\x00"},
    {**ROW, "title": "lone \ud800 surrogate"},
    {**ROW, "title": 5},
    {**ROW, "item_id": ""},
    {**ROW, "item_id": "i" * 201},
    {**ROW, "in_stock": 1},
    {**ROW, "attributes": []},
    {**ROW, "attributes": {"big": 2**70}},
    {**ROW, "attributes": {"k": "nul\x00"}},
    {**ROW, "attributes": {"nul\x00": 1}},
    {**ROW, "entities": [{"kind": "not a slug", "id": "x"}]},
    {**ROW, "entities": [{"kind": "tag", "id": "x", "weight": 0}]},
    {**ROW, "entities": [{"kind": "tag", "id": "x", "weight": "2"}]},
    {**ROW, "entities": [{"kind": "tag", "id": "x", "extra": 1}]},
    {**ROW, "entities": [{"kind": "tag"}]},
    {**ROW, "entities": [{"kind": "tag", "id": str(n)} for n in range(101)]},
    {**ROW, "entities": {"kind": "tag"}},
    {**ROW, "unknown": 1},
    {"title": "No id"},
    "not an object",
]


@pytest.mark.parametrize("row", PLAIN, ids=range(len(PLAIN)))
def test_a_plain_row_is_read_as_the_serializer_reads_it(row):
    serializer = ItemBatchRowSerializer(data=row)

    assert serializer.is_valid(), serializer.errors
    fast = item_row_read(row)
    assert fast == serializer.to_value()
    assert fast is not None and str(fast.price) == str(serializer.to_value().price)


@pytest.mark.parametrize("row", UNUSUAL, ids=range(len(UNUSUAL)))
def test_an_unusual_row_is_left_to_the_serializer(row):
    assert item_row_read(row) is None


def test_the_price_is_quantized_as_the_serializer_does():
    assert item_row_read({**ROW, "price": "4.5"}).price.as_tuple() == Decimal("4.50").as_tuple()
    assert item_row_read({**ROW, "price": 7}).price.as_tuple() == Decimal("7.00").as_tuple()


PATCHES = [
    {"item_id": "a", "price": "3.10"},
    {"item_id": "a", "price": None, "in_stock": True},
    {"item_id": "a", "attributes": {"k": None, "n": 1}},
    {"item_id": "a", "in_stock": False, "attributes": {}},
]
UNUSUAL_PATCHES = [
    {"item_id": "a"},
    {"item_id": "a", "title": "x"},
    {"item_id": "a", "price": "-1"},
    {"item_id": "a", "in_stock": "yes"},
    {"item_id": "", "price": "1"},
    {"price": "1"},
    {"item_id": "a", "attributes": "x"},
]


@pytest.mark.parametrize("row", PATCHES, ids=range(len(PATCHES)))
def test_a_plain_patch_row_is_read_as_the_serializer_reads_it(row):
    serializer = ItemPatchRowSerializer(data=row)

    assert serializer.is_valid(), serializer.errors
    assert patch_row_read(row) == serializer.to_value()


@pytest.mark.parametrize("row", UNUSUAL_PATCHES, ids=range(len(UNUSUAL_PATCHES)))
def test_an_unusual_patch_row_is_left_to_the_serializer(row):
    assert patch_row_read(row) is None
