"""The batch rows' fast path (graph_app.item_rows) on what catalogs repeat (prices, entities, attributes of text and
numbers), read once and again from what it keeps: always what the serializer reads, or left to it."""

from __future__ import annotations

import pytest

from graph_app.apis import ItemBatchRowSerializer
from graph_app.item_rows import item_row_read

ROW = {
    "item_id": "sku-1",
    "title": "Mug",
    "price": "4.50",
    "entities": [{"kind": "brand", "id": "acme", "name": "Acme"}],
}

PLAIN = [
    ROW,
    {**ROW, "attributes": {"colour": "red", "size": 3, "ratio": 0.5, "new": True, "gone": None}},
    {**ROW, "attributes": {"big": 2**63 - 1, "small": -(2**63), "far": 9.2e18}},
    {**ROW, "attributes": {"caf\u00e9": "cr\u00e8me \u2615"}},
    {**ROW, "price": 4.5},
    {**ROW, "price": "4.5"},
    {**ROW, "entities": [{"kind": "tag", "id": "x", "weight": 1}, {"kind": "tag", "id": "y", "weight": 1.0}]},
]
UNUSUAL = [
    {**ROW, "attributes": {"big": 2**63}},
    {**ROW, "attributes": {"far": 1e19}},
    {**ROW, "attributes": {"inf": float("inf")}},
    {**ROW, "attributes": {"nan": float("nan")}},
    {**ROW, "attributes": {"nul": "a\x00b"}},
    {**ROW, "attributes": {"lone": "\ud800"}},
    {**ROW, "entities": [{"kind": "tag", "id": "x", "weight": True}]},
    {**ROW, "entities": [{"kind": "tag", "id": " x"}]},
    {**ROW, "price": "4.555"},
]


@pytest.mark.parametrize("row", PLAIN, ids=range(len(PLAIN)))
def test_a_plain_row_read_again_is_what_the_serializer_reads(row):
    serializer = ItemBatchRowSerializer(data=row)
    assert serializer.is_valid(), serializer.errors

    first, again = item_row_read(row), item_row_read(row)

    assert first == again == serializer.to_value()
    assert first is not None and str(first.price) == str(serializer.to_value().price)


@pytest.mark.parametrize("row", UNUSUAL, ids=range(len(UNUSUAL)))
def test_an_unusual_row_is_left_to_the_serializer_after_a_plain_one_alike(row):
    assert item_row_read(ROW) is not None  # its price and entity kept

    assert item_row_read(row) is None
