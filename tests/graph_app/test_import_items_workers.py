"""`manage.py import_items` with its batches in worker processes (`--workers`): what one process would do, the
file's order kept where two batches write the same item or name the same entity, the checkpoint never ahead of
what is committed; and the bulk write's entities, which concurrent writers must not wait for."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from graph_app import catalog_bulk, catalog_import
from graph_app.catalog_bulk import items_upsert_many
from graph_app.models import Entity, Item, ItemEntity
from graph_app.services import EntityRef, ItemInput
from personalization import redis_keys
from personalization.errors import ApplicationError

# Committed for real: the workers' own connections see only what is committed, and so does the test.
pytestmark = pytest.mark.django_db(transaction=True)

CSV_HEADER = "item_id,title,description,category,price,in_stock,brand,attributes\n"


def run(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("import_items", str(path), "--no-progress", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def titles() -> dict[str, str]:
    return dict(Item.objects.values_list("external_id", "title"))


def rejects_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint_of(source: Path) -> dict[str, object]:
    return json.loads(source.with_name(source.name + ".import-checkpoint.json").read_text())


def feed(tmp_path: Path, rows: list[str]) -> Path:
    source = tmp_path / "catalog.csv"
    source.write_text(CSV_HEADER + "".join(rows))
    return source


def good(index: int, *, title: str | None = None, brand: str = "Acme") -> str:
    return f'i{index},{title or f"Mug {index}"},A mug,kitchen,{index}.5,true,{brand},"{{}}"\n'


def test_workers_store_what_one_process_would_with_rejects_in_file_order(tmp_path, clean_redis, shelves):
    rows = [good(index) for index in range(12)]
    rows[3] = "i3,,,,,,,\n"  # no title
    rows[8] = "i8,Mug 8,,,-1,true,,\n"  # a negative price
    rows[10] = "i10,Too few\n"
    source = feed(tmp_path, rows)
    rejects = tmp_path / "rejects.jsonl"

    out = run(source, "--workers", "2", "--batch-size", "2", "--rejects", str(rejects))

    assert out.splitlines()[0].startswith("Read 12, created 9, updated 0, unchanged 0, rejected 3 in ")
    assert sorted(titles()) == sorted(f"i{index}" for index in range(12) if index not in (3, 8, 10))
    assert [(reject["line"], [error["field"] for error in reject["errors"]]) for reject in rejects_of(rejects)] == [
        (5, ["title"]),
        (10, ["price"]),
        (12, ["item"]),
    ]
    assert rejects_of(rejects)[2]["row"] == "i10,Too few"
    assert out.splitlines()[1:5] == [
        "First problems:",
        "  line 5: title: This field is required.",
        "  line 10: price: Ensure this value is greater than or equal to 0.",
        "  line 12: item: Expected 8 columns, found 2.",
    ]
    checkpoint = checkpoint_of(source)
    assert (checkpoint["line"], checkpoint["finished"]) == (13, True)
    assert checkpoint["totals"] == {
        "read": 12, "rejected": 3, "created": 9, "updated": 0, "unchanged": 0, "missing": 0, "repeated": 0,
    }  # fmt: skip
    assert set(ItemEntity.objects.values_list("item__external_id", "entity__external_id")) == {
        (external_id, "acme") for external_id in titles()
    }
    assert {key.decode() for key in clean_redis.hkeys(redis_keys.CATALOG_VECTORS)} == set(titles())
    for partition in redis_keys.partitions():
        assert clean_redis.hget(redis_keys.catalog_entities(partition), "i0") == b"category:kitchen|brand:acme"
    assert len(shelves()) == 6  # one message a batch

    again = run(source, "--workers", "2", "--batch-size", "2", "--restart")

    assert again.splitlines()[0].startswith("Read 12, created 0, updated 0, unchanged 9, rejected 3 in ")


def test_a_later_row_of_an_item_in_another_batch_wins(tmp_path):
    # i1's second row and the brand's second spelling come two batches later: the later batch waits for the
    # earlier one to commit, whichever worker runs it.
    rows = [
        good(0),
        good(1, title="First"),
        good(2),
        good(3),
        good(4, brand="ACME"),
        good(1, title="Last", brand="ACME"),
    ]
    source = feed(tmp_path, rows)

    for _ in range(3):
        out = run(source, "--workers", "2", "--batch-size", "2", "--restart")

        assert titles()["i1"] == "Last"
        assert Entity.objects.get(kind="brand", external_id="acme").name == "ACME"
        Item.objects.filter(external_id="i1").update(title="Reset")
        Entity.objects.filter(kind="brand").update(name="Acme")
    assert out.splitlines()[0].startswith("Read 6, ")


def test_a_resumed_import_with_workers_ends_as_one_run_would(tmp_path, clean_redis):
    rows = [good(index) for index in range(9)]
    rows[4] = "i4,,,,,,,\n"
    source = feed(tmp_path, rows)
    rejects = tmp_path / "rejects.jsonl"

    first = run(source, "--workers", "2", "--batch-size", "2", "--max-batches", "3", "--rejects", str(rejects))

    assert (checkpoint_of(source)["line"], checkpoint_of(source)["finished"]) == (7, False)
    assert sorted(titles()) == ["i0", "i1", "i2", "i3", "i5"]
    assert first.splitlines()[-1].startswith("Stopped after line 7 (3 batches)")

    second = run(source, "--workers", "2", "--batch-size", "2", "--rejects", str(rejects))

    assert second.splitlines()[1].startswith("Read 3, created 3, updated 0, unchanged 0, rejected 0 in ")
    assert checkpoint_of(source)["totals"]["created"] == 8
    assert [reject["line"] for reject in rejects_of(rejects)] == [6]
    assert len(clean_redis.hkeys(redis_keys.CATALOG_STATIC)) == 8


def test_a_refused_batch_stops_the_import_with_the_checkpoint_before_it(tmp_path, monkeypatch):
    real_upsert = catalog_import.items_upsert_many

    def refusing(*, rows, projection):  # the catalog refusing a whole batch (its constraints), in the worker
        if any(row.external_id == "i4" for row in rows):
            raise ApplicationError("price: refused by the catalog's constraints.")
        return real_upsert(rows=rows, projection=projection)

    monkeypatch.setattr(catalog_import, "items_upsert_many", refusing)  # the workers are forked with it
    source = feed(tmp_path, [good(index) for index in range(10)])

    with pytest.raises(CommandError, match="The catalog refused a batch"):
        run(source, "--workers", "2", "--batch-size", "2")

    # Batches 1 and 2 committed and recorded; batch 3 (i4, i5) refused; later ones may have committed, unrecorded.
    checkpoint = checkpoint_of(source)
    assert (checkpoint["line"], checkpoint["finished"], checkpoint["totals"]["created"]) == (5, False, 4)
    assert {"i0", "i1", "i2", "i3"} <= set(titles()) and not {"i4", "i5"} & set(titles())
    monkeypatch.setattr(catalog_import, "items_upsert_many", real_upsert)

    out = run(source, "--workers", "2", "--batch-size", "2")

    assert sorted(titles()) == sorted(f"i{index}" for index in range(10))
    created = checkpoint_of(source)["totals"]
    assert (created["read"], created["created"] + created["unchanged"]) == (10, 10)
    assert out.splitlines()[0] == "Resumed after line 5."


def test_a_stock_feed_with_workers_reports_ids_not_in_the_catalog_in_file_order(tmp_path):
    run(feed(tmp_path, [good(index) for index in range(6)]), "--workers", "1")
    source = tmp_path / "stock.csv"
    source.write_text("item_id,price,in_stock\n" + "i0,0.5,false\nghost-1,1,true\ni2,2.5,true\ni3,9,true\n"
                      "ghost-2,1,true\ni5,7,false\ni9,1,true\n")  # fmt: skip
    rejects = tmp_path / "rejects.jsonl"

    out = run(source, "--workers", "2", "--batch-size", "2", "--rejects", str(rejects))

    assert out.splitlines()[1].startswith(
        "Read 7, updated 3, unchanged 1, not in the catalog 3, rejected 0 in "
    )  # i2 is unchanged
    assert [(reject["line"], reject["row"]) for reject in rejects_of(rejects)] == [
        (3, "ghost-1,1,true"),
        (6, "ghost-2,1,true"),
        (8, "i9,1,true"),
    ]
    assert set(Item.objects.filter(in_stock=False).values_list("external_id", flat=True)) == {"i0", "i5"}


def test_json_lines_and_merchant_center_feeds_with_workers(tmp_path):
    jsonl = tmp_path / "catalog.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"item_id": f"j{index}", "title": f"Book {index}",
                        "entities": [{"kind": "author", "id": "a-1", "name": "A. Writer" if index < 4 else "A. W."}]})
            + "\n"
            for index in range(6)
        )
    )  # fmt: skip
    gmc = tmp_path / "feed.tsv"
    gmc.write_text(
        "id\ttitle\tbrand\tprice\tavailability\n"
        + "".join(f"g{index}\tShoe {index}\tNorthPeak\t{index}.00 USD\tin_stock\n" for index in range(4))
        + "g9\tBoot\tNORTHPEAK\t9.00 USD\tin_stock\ng2\tShoe again\tNORTHPEAK\t1.00 USD\tout_of_stock\n"
    )

    run(jsonl, "--workers", "2", "--batch-size", "2")
    run(gmc, "--workers", "2", "--batch-size", "2")

    assert Entity.objects.get(kind="author", external_id="a-1").name == "A. W."
    assert Entity.objects.get(kind="brand", external_id="northpeak").name == "NORTHPEAK"
    assert Item.objects.get(external_id="g2").title == "Shoe again"
    assert Item.objects.filter(external_id__startswith="j").count() == 6


def test_an_interrupted_import_records_the_batches_running_and_resumes_after_them(tmp_path, monkeypatch):
    real_claims = catalog_import._batch_claims
    read: list[int] = []

    def interrupted(rows, **options):  # Ctrl-C while this process reads the fifth batch
        read.append(rows[0].line)
        if len(read) == 5:
            raise KeyboardInterrupt
        return real_claims(rows, **options)

    monkeypatch.setattr(catalog_import, "_batch_claims", interrupted)
    source = feed(tmp_path, [good(index) for index in range(12)])

    with pytest.raises(CommandError, match="Interrupted"):
        run(source, "--workers", "2", "--batch-size", "2")

    # The four batches sent before it ran to their end and are recorded; nothing after them was written.
    assert (checkpoint_of(source)["line"], checkpoint_of(source)["totals"]["created"]) == (9, 8)
    assert sorted(titles()) == sorted(f"i{index}" for index in range(8))
    monkeypatch.setattr(catalog_import, "_batch_claims", real_claims)

    out = run(source, "--workers", "2", "--batch-size", "2")

    assert out.splitlines()[1].startswith("Read 4, created 4, updated 0, unchanged 0, rejected 0 in ")


def test_workers_must_be_at_least_one(tmp_path):
    with pytest.raises(CommandError, match="--workers must be at least 1"):
        run(feed(tmp_path, [good(0)]), "--workers", "0")


def test_an_entity_in_another_writer_s_transaction_is_not_waited_for():
    items_upsert_many(rows=[ItemInput("a", "Lamp", entities=(EntityRef("brand", "lumo", "Lumo"),))])
    params = {key: value for key, value in connection.get_connection_params().items() if key != "cursor_factory"}
    with psycopg.connect(**params) as other:
        with other.cursor() as cursor:  # another writer naming the same brand, its transaction left open
            catalog_bulk._entities_upsert(cursor, names={("brand", "lumo"): "Lumo"})
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")

        items_upsert_many(rows=[ItemInput("b", "Shade", entities=(EntityRef("brand", "lumo", "Lumo"),))])

        other.rollback()
    assert set(ItemEntity.objects.values_list("item__external_id", "entity__name")) == {("a", "Lumo"), ("b", "Lumo")}
