"""`manage.py import_items`: catalog feeds (CSV, JSON lines, Google Merchant Center TSV, stock feeds) into the
catalog's rows, entities and the online catalog in Redis; rejects, resume, re-import."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from io import StringIO
from pathlib import Path

import numpy as np
import orjson
import pytest
from django.core.management import CommandError, call_command

from graph_app.apis import ItemBatchRowSerializer
from graph_app.models import Entity, Item, ItemEntity
from graph_app.online import unpack_static
from personalization import redis_keys
from personalization.errors import flatten_errors

pytestmark = pytest.mark.django_db

CSV_HEADER = "item_id,title,description,category,price,in_stock,brand,attributes\n"
GMC_HEADER = (
    "id\ttitle\tdescription\tproduct_type\tgoogle_product_category\tbrand\tprice\tavailability\tlink\timage_link\n"
)


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """The command, with the after-commit publications (Redis, shelves) run as in autocommit."""

    def command(path: Path, *args: str) -> str:
        out = StringIO()
        with django_capture_on_commit_callbacks(execute=True):
            call_command("import_items", str(path), "--no-progress", *args, stdout=out, stderr=StringIO())
        return out.getvalue()

    return command


def items() -> list[tuple[object, ...]]:
    return list(
        Item.objects.order_by("external_id").values_list(
            "external_id", "title", "description", "category", "price", "in_stock", "attributes"
        )
    )


def linked(external_id: str) -> list[tuple[str, str, str]]:
    return sorted(
        ItemEntity.objects.filter(item__external_id=external_id).values_list(
            "entity__kind", "entity__external_id", "entity__name"
        )
    )


def rejects_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def online(redis, external_id: str) -> tuple[str | None, tuple[float, bool, float] | None, bool]:
    """The online catalog's entity keys (every partition's copy the same), static facts and whether a vector is
    stored."""
    keys = {redis.hget(redis_keys.catalog_entities(partition), external_id) for partition in redis_keys.partitions()}
    assert len(keys) == 1
    key = keys.pop()
    static = redis.hget(redis_keys.CATALOG_STATIC, external_id)
    return (
        None if key is None else key.decode(),
        None if static is None else unpack_static(static)[:2],
        redis.hget(redis_keys.CATALOG_VECTORS, external_id) is not None,
    )


def test_csv_feed_stores_items_brands_and_the_online_catalog_and_rejects_bad_rows(run, tmp_path, clean_redis):
    source = tmp_path / "catalog.csv"
    source.write_text(
        CSV_HEADER
        + 'mug-1,Blue mug,"Stoneware, 300 ml",kitchen,12.5,true,Acme,"{""colour"": ""blue""}"\n'
        + "mug-2,  Red mug  ,,kitchen,,false,ACME ,\n"
        + ",No id,,,,,,\n"
        + "mug-3,,,,1.999,maybe,,\n"
        + 'mug-4,Bad attrs,,,,,,"{not json"\n'
        + "mug-5,Too few\n"
    )
    rejects = tmp_path / "rejects.jsonl"

    out = run(source, "--rejects", str(rejects))

    assert items() == [
        ("mug-1", "Blue mug", "Stoneware, 300 ml", "kitchen", Decimal("12.50"), True, {"colour": "blue"}),
        ("mug-2", "Red mug", "", "kitchen", None, False, {}),
    ]
    assert linked("mug-1") == linked("mug-2") == [("brand", "acme", "ACME")]  # one entity, the last spelling
    assert Entity.objects.filter(kind="brand").count() == 1
    assert online(clean_redis, "mug-1") == ("category:kitchen|brand:acme", (12.5, True), True)
    price, in_stock = online(clean_redis, "mug-2")[1]
    assert np.isnan(price) and in_stock is False
    assert [(reject["line"], reject["errors"]) for reject in rejects_of(rejects)] == [
        (4, [{"field": "item_id", "message": "This field is required."}]),  # an empty cell is no value
        (
            5,
            [
                {"field": "title", "message": "This field is required."},
                {"field": "price", "message": "Ensure that there are no more than 2 decimal places."},
                {"field": "in_stock", "message": "Must be a valid boolean."},
            ],
        ),
        (6, [{"field": "attributes", "message": "Not valid JSON."}]),
        (7, [{"field": "item", "message": "Expected 8 columns, found 2."}]),
    ]
    assert rejects_of(rejects)[0]["row"] == ",No id,,,,,,"
    lines = out.splitlines()
    assert lines[0].startswith("Read 6, created 2, updated 0, unchanged 0, rejected 4 in ")
    assert lines[1:8] == [
        "First problems:",
        "  line 4: item_id: This field is required.",
        "  line 5: title: This field is required.",
        "  line 5: price: Ensure that there are no more than 2 decimal places.",
        "  line 5: in_stock: Must be a valid boolean.",
        "  line 6: attributes: Not valid JSON.",
        "  line 7: item: Expected 8 columns, found 2.",
    ]
    assert lines[-2:] == [f"Rejected rows written to {rejects}.", "Done: the whole file is in the catalog."]


def test_jsonl_feed_takes_the_item_api_body_with_entities(run, tmp_path, clean_redis):
    source = tmp_path / "catalog.jsonl"
    rows = [
        {"item_id": "b1", "title": "Novel", "category": "books", "price": 9, "in_stock": True,
         "entities": [{"kind": "author", "id": "a-7", "name": "A. Writer", "weight": 2}], "attributes": {"pages": 320}},
        {"item_id": "b2", "title": "Atlas", "availability": "out_of_stock", "price": "30.00"},
        {"item_id": "b3", "title": "x" * 501},
        {"item_id": "b4", "title": "Bad kind", "entities": [{"kind": "not a slug", "id": "z"}]},
        ["not", "an", "object"],
    ]  # fmt: skip
    source.write_text("".join(json.dumps(row) + "\n" for row in rows) + "{broken\n")
    rejects = tmp_path / "rejects.jsonl"

    out = run(source, "--rejects", str(rejects))

    assert items() == [
        ("b1", "Novel", "", "books", Decimal("9.00"), True, {"pages": 320}),
        ("b2", "Atlas", "", "", Decimal("30.00"), False, {}),
    ]
    assert list(
        ItemEntity.objects.filter(item__external_id="b1").values_list("entity__kind", "entity__external_id", "weight")
    ) == [("author", "a-7", 2.0)]
    assert online(clean_redis, "b1") == ("category:books|author:a-7", (9.0, True), True)
    assert [(reject["line"], [error["field"] for error in reject["errors"]]) for reject in rejects_of(rejects)] == [
        (3, ["title"]),
        (4, ["entities.0.kind"]),
        (5, ["item"]),
        (6, ["item"]),
    ]
    assert rejects_of(rejects)[0]["errors"][0]["message"] == "Ensure this field has no more than 500 characters."
    assert out.splitlines()[0].startswith("Read 6, created 2, updated 0, unchanged 0, rejected 4 in ")


def test_merchant_center_feed_maps_google_columns(run, tmp_path, clean_redis):
    source = tmp_path / "feed.txt"
    source.write_text(
        GMC_HEADER + "sku-1\tTrail shoe\tLight\tApparel > Shoes > Running\t187\tNorthPeak\t89.90 USD\tin_stock\t"
        "https://shop.example/sku-1\thttps://cdn.example/sku-1.jpg\n"
        + "sku-2\tRain jacket\t\t\tApparel & Accessories > Clothing\t\tEUR 120\tpreorder\t\t\n"
        + "sku-3\tGloves\t\tApparel\t\tNorthPeak\t15.00 USD\tout_of_stock\t\t\n"
        + "sku-4\tBad price\t\t\t\t\ttwelve\tin_stock\t\t\n"
        + "sku-5\tBad stock\t\t\t\t\t5.00 USD\tsoon\t\t\n"
        + "\tNo id\t\t\t\t\t5.00 USD\tin_stock\t\t\n"
    )
    rejects = tmp_path / "rejects.jsonl"

    out = run(source, "--rejects", str(rejects))

    assert items() == [
        ("sku-1", "Trail shoe", "Light", "Apparel", Decimal("89.90"), True,
         {"currency": "USD", "link": "https://shop.example/sku-1", "image_link": "https://cdn.example/sku-1.jpg"}),
        ("sku-2", "Rain jacket", "", "Apparel & Accessories", Decimal("120.00"), True, {"currency": "EUR"}),
        ("sku-3", "Gloves", "", "Apparel", Decimal("15.00"), False, {"currency": "USD"}),
    ]  # fmt: skip
    assert linked("sku-1") == linked("sku-3") == [("brand", "northpeak", "NorthPeak")]
    assert linked("sku-2") == []
    assert online(clean_redis, "sku-3") == ("category:Apparel|brand:northpeak", (15.0, False), True)
    assert [(reject["line"], reject["errors"]) for reject in rejects_of(rejects)] == [
        (5, [{"field": "price", "message": 'Must be a number and an ISO 4217 currency code, like "12.99 USD".'}]),
        (6, [{"field": "availability", "message": "Must be one of in_stock, out_of_stock, preorder, backorder."}]),
        (7, [{"field": "id", "message": "This field is required."}]),  # an empty cell is no value
    ]
    assert out.splitlines()[0].startswith("Read 6, created 3, updated 0, unchanged 0, rejected 3 in ")


def test_a_second_import_of_the_same_file_changes_nothing(run, tmp_path, clean_redis):
    source = tmp_path / "catalog.tsv"
    source.write_text(
        GMC_HEADER
        + "a\tLamp\tWarm\tHome > Lighting\t\tLumo\t40.00 USD\tin_stock\thttps://x/a\t\n"
        + "b\tShade\t\tHome\t\tLumo\t12.00 USD\tout_of_stock\t\t\n"
    )
    run(source)

    def state() -> tuple[object, ...]:
        return (
            list(Item.objects.order_by("external_id").values_list("external_id", "updated_at")),
            items(),
            linked("a"),
            list(Entity.objects.values_list("id", "kind", "external_id", "name")),
            clean_redis.hgetall(redis_keys.CATALOG_STATIC),
            clean_redis.hgetall(redis_keys.CATALOG_VECTORS),
            clean_redis.get(redis_keys.CATALOG_VERSION),
        )

    before = state()

    out = run(source, "--restart")

    assert state() == before  # not even rewritten: the same updated_at, no new catalog version
    assert out.splitlines()[0].startswith("Read 2, created 0, updated 0, unchanged 2, rejected 0 in ")

    source.write_text(source.read_text().replace("40.00 USD", "45.00 USD"))
    out = run(source, "--restart")

    assert out.splitlines()[0].startswith("Read 2, created 0, updated 1, unchanged 1, rejected 0 in ")
    assert Item.objects.get(external_id="a").price == Decimal("45.00")
    assert Item.objects.count() == 2 and Entity.objects.count() == 1

    source.write_text(source.read_text().replace("Shade\t\tHome\t\tLumo", "Shade\t\tHome\t\tOtra"))
    out = run(source, "--restart")

    assert out.splitlines()[0].startswith("Read 2, created 0, updated 1, unchanged 1, rejected 0 in ")
    assert linked("b") == [("brand", "otra", "Otra")]

    out = run(source, "--restart", "--rewrite")

    assert out.splitlines()[0].startswith("Read 2, created 0, updated 2, unchanged 0, rejected 0 in ")
    assert Item.objects.count() == 2 and Entity.objects.count() == 2


def test_an_interrupted_import_resumes_and_ends_as_one_run_would(run, tmp_path, clean_redis):
    rows = [f"i{index},Item {index},,cat-{index % 2},{index}.25,true,Brand {index % 3},\n" for index in range(7)]
    rows[3] = "i3,,,,,,,\n"  # rejected: no title
    source = tmp_path / "catalog.csv"
    source.write_text(CSV_HEADER + "".join(rows))
    rejects = tmp_path / "rejects.jsonl"

    first = run(source, "--batch-size", "2", "--max-batches", "2", "--rejects", str(rejects))

    checkpoint = json.loads((tmp_path / "catalog.csv.import-checkpoint.json").read_text())
    assert (checkpoint["line"], checkpoint["finished"], checkpoint["mode"]) == (5, False, "full")
    assert [row[0] for row in items()] == ["i0", "i1", "i2"]
    assert first.splitlines()[-1] == (
        f"Stopped after line 5 (2 batches); run again to resume (checkpoint: {source}.import-checkpoint.json)."
    )

    second = run(source, "--batch-size", "2", "--rejects", str(rejects))

    assert second.splitlines()[0] == "Resumed after line 5."
    assert second.splitlines()[1].startswith("Read 3, created 3, updated 0, unchanged 0, rejected 0 in ")
    assert (
        second.splitlines()[2] == "Since the start of this file: Read 7, created 6, updated 0, unchanged 0, rejected 1."
    )
    assert [reject["line"] for reject in rejects_of(rejects)] == [5]
    resumed = items(), [linked(f"i{index}") for index in range(7)], clean_redis.hgetall(redis_keys.CATALOG_STATIC)

    Item.objects.all().delete()
    Entity.objects.all().delete()
    clean_redis.flushdb()
    run(source, "--restart")

    assert (
        items(),
        [linked(f"i{index}") for index in range(7)],
        clean_redis.hgetall(redis_keys.CATALOG_STATIC).keys(),
    ) == (resumed[0], resumed[1], resumed[2].keys())
    assert len(resumed[0]) == 6


def test_a_stock_feed_changes_only_price_and_stock_and_reports_ids_not_in_the_catalog(run, tmp_path, clean_redis):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        CSV_HEADER
        + 'p1,Kettle,Steel,kitchen,30.00,true,Acme,"{""volts"": 230}"\n'
        + "p2,Toaster,,kitchen,25.00,true,Acme,\n"
        + "p3,Grill,,garden,99.00,false,,\n"
    )
    run(catalog)
    untouched = list(Item.objects.order_by("external_id").values_list("external_id", "title", "attributes",
                                                                      "embedding", "created_at"))  # fmt: skip
    stock = tmp_path / "stock.csv"
    stock.write_text("item_id,price,in_stock\np1,27.50,\np2,,false\nghost,5.00,true\np3,abc,yes\np1,,0\np3,99,false\n")
    rejects = tmp_path / "rejects.jsonl"

    out = run(stock, "--rejects", str(rejects))

    assert [row[:6] for row in items()] == [
        ("p1", "Kettle", "Steel", "kitchen", Decimal("27.50"), False),
        ("p2", "Toaster", "", "kitchen", Decimal("25.00"), False),
        ("p3", "Grill", "", "garden", Decimal("99.00"), False),
    ]
    after = list(Item.objects.order_by("external_id").values_list("external_id", "title", "attributes",
                                                                  "embedding", "created_at"))  # fmt: skip
    assert [(row[0], row[1], row[2], list(row[3]), row[4]) for row in after] == [
        (row[0], row[1], row[2], list(row[3]), row[4]) for row in untouched
    ]
    assert linked("p1") == [("brand", "acme", "Acme")]
    assert online(clean_redis, "p1") == ("category:kitchen|brand:acme", (27.5, False), True)
    assert not Item.objects.filter(external_id="ghost").exists()
    assert [(reject["line"], reject["errors"]) for reject in rejects_of(rejects)] == [
        (4, [{"field": "item_id", "message": "Not in the catalog: a stock feed changes existing items only."}]),
        (5, [{"field": "price", "message": "A valid number is required."}]),
    ]
    lines = out.splitlines()
    assert lines[0] == "A stock feed: only price and stock change, of items already in the catalog."
    assert lines[1].startswith(
        "Read 6, updated 2, unchanged 1, not in the catalog 1, rejected 1, repeated in a batch 1 in "
    )


def test_a_merchant_center_stock_feed_and_partial_on_a_full_feed(run, tmp_path):
    run_full = tmp_path / "catalog.jsonl"
    run_full.write_text(
        json.dumps({"item_id": "s1", "title": "Sofa", "price": 500, "attributes": {"currency": "USD"}}) + "\n"
    )
    run(run_full)
    stock = tmp_path / "stock.tsv"
    stock.write_text("id\tprice\tavailability\ns1\t450.00 USD\tbackorder\nnope\t1.00 USD\tin_stock\n")

    out = run(stock)

    assert items() == [("s1", "Sofa", "", "", Decimal("450.00"), True, {"currency": "USD"})]
    assert out.splitlines()[1].startswith("Read 2, updated 1, unchanged 0, not in the catalog 1, rejected 0 in ")
    assert "  line 3: id: Not in the catalog: a stock feed changes existing items only." in out.splitlines()

    full_feed = tmp_path / "renamed.jsonl"
    full_feed.write_text(json.dumps({"item_id": "s1", "title": "Renamed", "price": "10", "in_stock": False}) + "\n")
    out = run(full_feed, "--partial")

    assert items() == [("s1", "Sofa", "", "", Decimal("10.00"), False, {"currency": "USD"})]
    with pytest.raises(CommandError, match="belongs to another file or format"):
        run(full_feed)  # its checkpoint is a stock feed's


def test_headers_that_cannot_be_imported_are_refused_before_anything_is_stored(run, tmp_path):
    unknown = tmp_path / "catalog.csv"
    unknown.write_text("item_id,title,colour\na,A,blue\n")
    no_title = tmp_path / "other.csv"
    no_title.write_text("item_id,description\na,A\n")
    no_id = tmp_path / "feed.tsv"
    no_id.write_text("title\tprice\nA\t1.00 USD\n")
    unknown_suffix = tmp_path / "catalog.xml"
    unknown_suffix.write_text("<rss/>")

    with pytest.raises(CommandError, match="unknown: colour"):
        run(unknown)
    with pytest.raises(CommandError, match="needs title"):
        run(no_title)
    with pytest.raises(CommandError, match="with id"):
        run(no_id)
    with pytest.raises(CommandError, match=r"Cannot tell the format of catalog\.xml"):
        run(unknown_suffix)
    assert Item.objects.count() == 0


GOOD_ROWS = [
    {"item_id": " sku-1 ", "title": " Mug ", "price": "12.5"},
    {"item_id": "sku-2", "title": "Mug", "price": 7, "in_stock": False, "description": "", "category": "c"},
    {"item_id": "sku-3", "title": "Mug", "price": 0.5, "attributes": {"a": [1, {"b": None}]}},
    {"item_id": "sku-4", "title": "Mug", "price": None, "entities": [{"kind": "brand", "id": " x ", "weight": 3}]},
    {"item_id": "sku-5", "title": "Mug", "unknown": "ignored", "entities": [{"kind": "t", "id": "y", "name": ""}]},
]
BAD_ROWS = [
    {"title": "no id"},
    {"item_id": "", "title": "blank id"},
    {"item_id": "x" * 201, "title": "long id"},
    {"item_id": "nul\x00", "title": "nul id"},
    {"item_id": 5, "title": "numeric id"},
    {"item_id": "a"},
    {"item_id": "a", "title": "   "},
    {"item_id": "a", "title": 12},
    {"item_id": "a", "title": "t\x00"},
    {"item_id": "a", "title": "t", "description": "d" * 20001},
    {"item_id": "a", "title": "t", "description": None},
    {"item_id": "a", "title": "t", "category": "c" * 201},
    {"item_id": "a", "title": "t", "price": "-1"},
    {"item_id": "a", "title": "t", "price": "1.234"},
    {"item_id": "a", "title": "t", "price": "12345678901"},
    {"item_id": "a", "title": "t", "price": "1e400"},
    {"item_id": "a", "title": "t", "price": "NaN"},
    {"item_id": "a", "title": "t", "price": True},
    {"item_id": "a", "title": "t", "price": 0.1 + 0.2},
    {"item_id": "a", "title": "t", "in_stock": "yes"},
    {"item_id": "a", "title": "t", "in_stock": 1},
    {"item_id": "a", "title": "t", "attributes": [1]},
    {"item_id": "a", "title": "t", "attributes": {"k": "v\x00"}},
    {"item_id": "a", "title": "t", "attributes": {"k": 2**64}},
    {"item_id": "a", "title": "t", "attributes": {"k": float("inf")}},
    {"item_id": "a", "title": "t", "attributes": None},
    {"item_id": "a", "title": "t", "entities": {"kind": "brand"}},
    {"item_id": "a", "title": "t", "entities": [{"kind": "brand", "id": f"b{n}"} for n in range(101)]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "a b", "id": "x"}]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "k" * 51, "id": "x"}]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "brand"}]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "brand", "id": "x", "weight": 0}]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "brand", "id": "x", "weight": 1001}]},
    {"item_id": "a", "title": "t", "entities": [{"kind": "brand", "id": "x", "name": "n" * 301}]},
    {"item_id": "a", "title": "t", "entities": ["brand"]},
]


def test_an_imported_file_of_good_rows_stores_what_the_item_api_would(run, tmp_path):
    source = tmp_path / "good.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in GOOD_ROWS))

    run(source)

    for row in GOOD_ROWS:
        serializer = ItemBatchRowSerializer(data=dict(row))
        assert serializer.is_valid()
        expected = serializer.to_input(serializer.validated_data["item_id"])
        item = Item.objects.get(external_id=expected.external_id)
        assert (item.title, item.description, item.category, item.price, item.in_stock, item.attributes) == (
            expected.title,
            expected.description,
            expected.category,
            expected.price,
            expected.in_stock,
            expected.attributes,
        )
        assert sorted(
            ItemEntity.objects.filter(item=item).values_list("entity__kind", "entity__external_id", "weight")
        ) == sorted((ref.kind, ref.external_id, ref.weight) for ref in expected.entities)


def test_an_imported_file_of_bad_rows_gets_the_item_api_s_messages(run, tmp_path):
    source = tmp_path / "bad.jsonl"
    portable = [row for row in BAD_ROWS if row.get("attributes") != {"k": float("inf")}]  # JSON cannot hold inf
    source.write_text("".join(json.dumps(row) + "\n" for row in portable))
    rejects = tmp_path / "rejects.jsonl"

    run(source, "--rejects", str(rejects))

    expected = []
    for line, row in enumerate(portable, start=1):
        serializer = ItemBatchRowSerializer(data=orjson.loads(json.dumps(row)))  # the file's values, as read
        assert not serializer.is_valid()
        errors = flatten_errors(serializer.errors)
        expected.append((line, [{"field": name, "message": messages[0]} for name, messages in errors.items()]))
    assert [(reject["line"], reject["errors"]) for reject in rejects_of(rejects)] == expected
    assert Item.objects.count() == 0


def test_a_gzipped_feed_with_google_s_spaced_names_and_the_progress_bar(django_capture_on_commit_callbacks, tmp_path):
    source = tmp_path / "feed.txt.gz"
    source.write_bytes(
        gzip.compress(
            b"ID\tTitle\tPrice\tAvailability\tImage link\ng1\tCap\t9.50 usd\tout of stock\thttps://x/g1.jpg\n"
        )
    )
    out, err = StringIO(), StringIO()

    with django_capture_on_commit_callbacks(execute=True):
        call_command("import_items", str(source), stdout=out, stderr=err)

    assert items() == [
        ("g1", "Cap", "", "", Decimal("9.50"), False, {"currency": "USD", "image_link": "https://x/g1.jpg"})
    ]
    assert "feed.txt.gz" in err.getvalue()  # tqdm's bar
    assert out.getvalue().splitlines()[-1] == "Done: the whole file is in the catalog."


def test_within_a_batch_the_last_row_of_an_id_counts_even_when_it_repeats_the_catalog(run, tmp_path):
    source = tmp_path / "catalog.jsonl"
    stored = {"item_id": "k", "title": "Kettle", "price": "30.00", "entities": [{"kind": "brand", "id": "acme"}]}
    source.write_text(json.dumps(stored) + "\n")
    run(source)
    source.write_text(
        json.dumps({**stored, "title": "Renamed"})
        + "\n"  # a change, undone by the next row
        + json.dumps(stored)
        + "\n"
        + json.dumps({**stored, "item_id": " k2 ", "title": " Pot "})
        + "\n"  # new, trimmed as the API trims
        + json.dumps({"item_id": "k2", "title": "Pot", "price": 30})
        + "\n"  # the same item once trimmed
    )

    out = run(source, "--restart")

    assert [row[:5] for row in items()] == [
        ("k", "Kettle", "", "", Decimal("30.00")),
        ("k2", "Pot", "", "", Decimal("30.00")),
    ]
    assert linked("k") == [("brand", "acme", "")]
    assert out.splitlines()[0].startswith(
        "Read 4, created 1, updated 0, unchanged 1, rejected 0, repeated in a batch 2 in "
    )
