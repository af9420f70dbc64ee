"""`manage.py import_items --bulk-load`: the items' vector index is dropped for the import and built again after
it (also when the import stops early), with the rows, vectors and online catalog of an ordinary import."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from graph_app.item_vector_index import INDEX_NAME, ivfflat_lists
from graph_app.models import Item
from personalization import redis_keys

# Outside a transaction, as the command runs: the index is dropped and built CONCURRENTLY.
pytestmark = pytest.mark.django_db(transaction=True)

CSV_HEADER = "item_id,title,description,category,price,in_stock,brand,attributes\n"


def run(path: Path, *args: str) -> str:
    out = StringIO()
    call_command("import_items", str(path), "--no-progress", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def index_definition() -> tuple[str, bool] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_indexdef(c.oid), i.indisvalid FROM pg_index AS i "
            "JOIN pg_class AS c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [INDEX_NAME],
        )
        row = cursor.fetchone()
    return None if row is None else (row[0], row[1])


def built_for(vectors: int) -> tuple[str, bool]:
    """The valid index a build over `vectors` vectors leaves: its lists sized to them."""
    return (
        f"CREATE INDEX {INDEX_NAME} ON public.graph_app_item USING ivfflat (embedding vector_cosine_ops) "
        f"WITH (lists='{ivfflat_lists(vectors)}')",
        True,
    )


def serving_index() -> bool:
    found = index_definition()
    return found is not None and found[1] and "USING ivfflat (embedding vector_cosine_ops)" in found[0]


def feed(tmp_path: Path, count: int) -> Path:
    source = tmp_path / "catalog.csv"
    source.write_text(
        CSV_HEADER
        + "".join(f'sku-{index},Mug {index},A mug,kitchen,{index}.5,true,Acme,"{{}}"\n' for index in range(count))
        + "sku-bad,,,,,,,\n"
    )
    return source


def test_a_bulk_load_stores_every_row_and_vector_and_builds_the_index_again_for_them(tmp_path, clean_redis):
    assert serving_index()

    out = run(feed(tmp_path, 30), "--bulk-load")

    assert Item.objects.count() == 30
    assert Item.objects.filter(embedding__isnull=True).count() == 0
    assert clean_redis.hlen(redis_keys.CATALOG_VECTORS) == 30
    assert index_definition() == built_for(30)
    lines = out.splitlines()
    assert lines[0].startswith("Read 31, created 30, updated 0, unchanged 0, rejected 1 in ")
    assert any(line.startswith("Vector index built again in ") for line in lines)
    assert lines[-1] == "Done: the whole file is in the catalog."
    # The index serves nearest-neighbour queries again.
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # 30 rows: the planner would rather read them all
        cursor.execute(
            "EXPLAIN SELECT id FROM graph_app_item ORDER BY embedding <=> (SELECT embedding FROM graph_app_item "
            "LIMIT 1) LIMIT 10"
        )
        plan = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
    assert INDEX_NAME in plan


def test_a_bulk_load_stopped_early_leaves_the_index_built_and_resumes(tmp_path, clean_redis):
    source = feed(tmp_path, 30)

    out = run(source, "--bulk-load", "--batch-size", "10", "--max-batches", "1")

    assert Item.objects.count() == 10
    assert index_definition() == built_for(10)
    assert "run again to resume" in out.splitlines()[-1]

    run(source, "--bulk-load", "--batch-size", "10")

    assert Item.objects.count() == 30
    assert index_definition() == built_for(30)


def test_a_bulk_load_finds_an_invalid_index_left_by_a_failed_build_and_replaces_it(tmp_path, clean_redis):
    with connection.cursor() as cursor:  # what an interrupted CREATE INDEX CONCURRENTLY leaves behind
        cursor.execute(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX_NAME}'::regclass")

    run(feed(tmp_path, 5), "--bulk-load")

    assert index_definition() == built_for(5)


def test_a_bulk_load_of_a_stock_feed_is_refused_and_keeps_the_index(tmp_path):
    source = tmp_path / "stock.csv"
    source.write_text("item_id,price\nsku-1,2.50\n")

    before = index_definition()
    with pytest.raises(CommandError, match="--bulk-load is for full rows"):
        run(source, "--bulk-load")

    assert index_definition() == before and serving_index()
