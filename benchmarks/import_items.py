"""Catalog feed import rate: `manage.py import_items` on deterministic generated feeds.

Full rows: a Google Merchant Center TSV feed and the same items as CSV and JSON lines (`--items`, default 100k; 2k
brands, 40 product types, 0.5 % bad rows), each imported into an empty catalog, then the TSV again (every item an
update to the same values). Stock feed: `--stock-items` (default 1M) items put in the catalog by one SQL statement
(the import of that many full rows is the first figure's business), then a TSV stock feed of all of them (id, price,
availability) imported. Rows per second end to end: read, validate, write PostgreSQL and the Redis online catalog,
checkpoint. The feeds are generated under .data/bench-import-items/feeds (never committed) and reused when present;
the servers are this benchmark's own embedded ones under .data/bench-import-items (unless DATABASE_URL / REDIS_URL
are set). Batches run in the importer's worker processes (`--workers`). Results go to BENCHMARKS.md
(`--no-record`: printed only).

    .venv/bin/python benchmarks/import_items.py [--items 100000] [--stock-items 1000000] [--skip-stock] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, django_setup, record

BENCH_DATA_DIR = ROOT / ".data" / "bench-import-items"
FEEDS_DIR = BENCH_DATA_DIR / "feeds"
GMC_COLUMNS = ["id", "title", "description", "product_type", "google_product_category", "brand", "price",
               "availability", "link", "image_link"]  # fmt: skip
AVAILABILITY = ["in_stock"] * 8 + ["out_of_stock", "preorder"]
WORDS = ["linen", "cotton", "wool", "steel", "oak", "walnut", "travel", "classic", "compact", "deluxe", "light",
         "heavy", "blue", "red", "green", "black", "white", "grey", "slim", "wide", "round", "square", "soft", "hard",
         "mini", "maxi"]  # fmt: skip
BAD_EVERY = 200  # one row in 200 has a bad price (rejected with its line number)


NOTES = """- **New items: PostgreSQL's HNSW index.** Each new content vector is an insertion into `item_embedding_hnsw`
  (m 16, ef_construction 64): 2,000 rows with vectors took 2.4-2.6 s to insert with the index and 0.06 s
  without it (20k items in the table); building the index afresh over 19,900 vectors took 4.9 s. So about
  1 ms a new item whatever the importer does, and more as the index grows (measured apart, 2026-12-06).
- **Changed items.** A changed row is a new row version; when its page is full it is not HOT and its vector
  goes into the HNSW index again (2,000 price updates of items with vectors, fillfactor 100: 1.8-2.2 s; on a
  copy with fillfactor 60, 6,000 updates took 3.2 s, then 0.8 s with 9,632 of 12,000 HOT). Migration 0005 now
  leaves half of each page free (fillfactor 50) for that reason. The stock catalog here is made by SQL without
  vectors, so its changed rows never paid that cost.
- **The bulk patch** (100k changed rows, profiled with the bulk service of 21:55 UTC): `items_patch_many`
  took 11.3 s of 14.4 s; its after-commit `item_cache_invalidate_many` (one Lua script call per item for the
  similar-items cache) 3.5 s, psycopg's client-side quoting of the arrays 1.3 s; reading, validating and
  comparing the rows 3 s.
- **A re-imported row.** A row that says exactly what the catalog holds is not validated again (the stored
  item passed the same checks): it costs its reading, the mapping of its columns and one comparison. Before
  that, reading each row as the API would (`graph_app.item_rows.item_row_read`) was 44 % of a re-import
  (20k rows, profiled), and 20k-row files re-imported at 12,000-22,000 rows/s depending on the machine's load.
- **Right after a cold import** the re-imports can run at half speed (autovacuum of the freshly written table
  and its vector index shares the 2 cores): run again on the same 100k catalog 10 minutes after the 22:35 run
  (speed line 41 ms, load 3-4.5), the three re-imports took 2.0-2.8 s, 36,000-50,500 rows/s.
- **The collector.** The cycle collector is off while a batch runs and collects between batches (a third of
  a re-import's time before).
- The machine was shared with other sessions' work: the Python speed line above and the load average below
  are the figures to compare runs by.
"""


def goals(results: list[tuple[str, int, float, float]]) -> str:
    """The first note: this run's figures against the goals (20,000 full rows/s, a 1M stock feed within a minute)."""
    by_name = {name: (seconds, rate) for name, _, seconds, rate in results}
    again = [rate for name, (_, rate) in by_name.items() if "again (no change)" in name and "stock" not in name]
    stock = by_name.get("stock feed TSV, 1 row in 10 a change")
    lines = [
        "Notes:\n",
        f"- **Goals.** Full rows: {min(again):,.0f}-{max(again):,.0f} rows/s where the importer's own work (read, "
        f"validate, compare with the catalog) is all there is to do ({'met' if min(again) >= 20_000 else 'short of'} "
        "the 20,000 rows/s goal on this run's machine: see its speed line), far fewer where items are written: new "
        "and changed items are bound by the bulk write and PostgreSQL's vector index (below), not by the importer.",
    ]
    if stock:
        lines.append(
            f"  The stock feed of 1M items with 1 row in 10 changing took {stock[0]:.0f} s (goal: under 60 s); with "
            "every row changing, the bulk patch bounds the rate (last row)."
        )
    return "\n".join(lines) + "\n"


def synthetic_items(count: int, *, seed: int = 11) -> list[dict[str, str]]:
    """Merchant Center rows (text cells), the same for every run of the same count."""
    generator = random.Random(seed)
    types = [f"Type {index} > Sub {index % 7} > Leaf {index % 3}" for index in range(40)]
    rows = []
    for index in range(count):
        words = generator.sample(WORDS, 4)
        rows.append(
            {
                "id": f"bench-item-{index:07d}",
                "title": " ".join(words[:3]).title() + f" {index}",
                "description": " ".join(generator.choices(WORDS, k=generator.randrange(8, 30))),
                "product_type": generator.choice(types),
                "google_product_category": "",
                "brand": f"Brand {generator.randrange(2000)}",
                "price": f"{generator.randrange(100, 50000) / 100:.2f} USD" if index % BAD_EVERY else "cheap USD",
                "availability": generator.choice(AVAILABILITY),
                "link": f"https://shop.example/p/{index}",
                "image_link": f"https://cdn.example/p/{index}.jpg",
            }
        )
    return rows


def write_gmc(rows: list[dict[str, str]], path: Path) -> None:
    lines = ["\t".join(GMC_COLUMNS)] + ["\t".join(row[name] for name in GMC_COLUMNS) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _as_api(row: dict[str, str]) -> dict[str, object]:
    number, _, currency = row["price"].partition(" ")
    return {
        "item_id": row["id"],
        "title": row["title"],
        "description": row["description"],
        "category": row["product_type"].split(" > ")[0],
        "price": number,
        "in_stock": row["availability"] != "out_of_stock",
        "attributes": {"currency": currency, "link": row["link"], "image_link": row["image_link"]},
        "brand": row["brand"],
    }


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["item_id", "title", "description", "category", "price", "in_stock", "brand", "attributes"])
    for row in rows:
        item = _as_api(row)
        attributes = orjson.dumps(item["attributes"]).decode()
        writer.writerow([item["item_id"], item["title"], item["description"], item["category"], item["price"],
                         str(item["in_stock"]).lower(), item["brand"], attributes])  # fmt: skip
    path.write_text(buffer.getvalue())


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("wb") as handle:
        for row in rows:
            item = _as_api(row)
            brand = item.pop("brand")
            item["entities"] = [{"kind": "brand", "id": str(brand).casefold(), "name": brand}]
            handle.write(orjson.dumps(item, option=orjson.OPT_APPEND_NEWLINE))


def write_stock(count: int, path: Path, *, seed: int = 13) -> None:
    generator = random.Random(seed)
    with path.open("w") as handle:
        handle.write("id\tprice\tavailability\n")
        for index in range(count):
            handle.write(
                f"bench-stock-{index:07d}\t{generator.randrange(100, 50000) / 100:.2f} USD\t"
                f"{generator.choice(AVAILABILITY)}\n"
            )


def feed(name: str, write: object, *args: object) -> Path:
    """The generated feed, made once (deterministic: the same arguments give the same bytes)."""
    path = FEEDS_DIR / name
    if not path.exists():
        FEEDS_DIR.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        write(*args, partial)  # type: ignore[operator]
        partial.rename(path)
    return path


def catalog_empty(prefix: str) -> None:
    from django.db import connection

    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM graph_app_itementity WHERE item_id IN (SELECT id FROM graph_app_item WHERE external_id "
            "LIKE %s)",
            [prefix + "%"],
        )
        cursor.execute("DELETE FROM graph_app_item WHERE external_id LIKE %s", [prefix + "%"])
        cursor.execute(
            "DELETE FROM graph_app_entity e WHERE kind = 'brand' AND external_id LIKE 'brand %%' "
            "AND NOT EXISTS (SELECT FROM graph_app_itementity l WHERE l.entity_id = e.id)"
        )
        cursor.execute("VACUUM ANALYZE graph_app_item")
    redis = get_control_redis()
    for key in [redis_keys.CATALOG_STATIC, redis_keys.CATALOG_VECTORS] + [
        redis_keys.catalog_entities(partition) for partition in redis_keys.partitions()
    ]:
        redis.delete(key)


def stock_catalog_make(feed_path: Path, *, change_every: int) -> int:
    """The stock feed's items in the catalog, in one statement, as the feed gives them except every
    `change_every`-th row's price (so the feed changes those); no vectors (see the notes). Returns how many
    the feed will change."""
    from django.db import connection

    ids, prices, in_stock = [], [], []
    with feed_path.open() as handle:
        next(handle)
        for index, line in enumerate(handle):
            external_id, price, availability = line.rstrip("\n").split("\t")
            number = float(price.split()[0])
            ids.append(external_id)
            prices.append(f"{number + 1 if index % change_every == 0 else number:.2f}")
            in_stock.append(availability != "out_of_stock")
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO graph_app_item (external_id, title, description, category, price, in_stock, attributes, "
            "embedding_source, created_at, updated_at) "
            "SELECT u.id, 'Item ' || u.id, '', 'cat', u.price, u.in_stock, '{}'::jsonb, '', now(), now() "
            "FROM unnest(%s::text[], %s::numeric[], %s::bool[]) AS u(id, price, in_stock)",
            [ids, prices, in_stock],
        )
        cursor.execute("VACUUM ANALYZE graph_app_item")
    return len(range(0, len(ids), change_every))


def timed_import(path: Path, *extra: str) -> tuple[float, str]:
    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command("import_items", str(path), "--no-progress", "--restart", *extra, stdout=out)
    return time.perf_counter() - started, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--stock-items", type=int, default=1_000_000)
    parser.add_argument("--skip-stock", action="store_true")
    parser.add_argument("--batch-size", type=int, help="Instead of the importer's default.")
    parser.add_argument("--workers", type=int, help="Worker processes, instead of the importer's default.")
    parser.add_argument("--no-record", action="store_true", help="Print the figures only (BENCHMARKS.md untouched).")
    args = parser.parse_args()
    os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(BENCH_DATA_DIR))
    django_setup()
    from django.core.management import call_command
    from django.db import connection

    from graph_app.catalog_import import ITEM_IMPORT_BATCH_SIZE, ITEM_IMPORT_WORKERS, STOCK_IMPORT_BATCH_SIZE

    extra = ("--batch-size", str(args.batch_size)) if args.batch_size else ()
    workers = args.workers or ITEM_IMPORT_WORKERS
    extra += ("--workers", str(workers))
    batches = (
        f"batches of {args.batch_size:,}"
        if args.batch_size
        else f"batches of {ITEM_IMPORT_BATCH_SIZE:,} (a stock feed {STOCK_IMPORT_BATCH_SIZE:,})"
    )
    call_command("migrate", verbosity=0)
    rows = synthetic_items(args.items)
    rejected = sum(1 for row in rows if row["price"] == "cheap USD")
    files = {
        "Merchant Center TSV": feed(f"items-{args.items}.tsv", write_gmc, rows),
        "CSV": feed(f"items-{args.items}.csv", write_csv, rows),
        "JSON lines": feed(f"items-{args.items}.jsonl", write_jsonl, rows),
    }
    changed = [{**row, "title": row["title"] + " v2"} if index % 10 == 0 else row for index, row in enumerate(rows)]
    files["Merchant Center TSV, 1 row in 10 changed"] = feed(f"items-{args.items}-changed.tsv", write_gmc, changed)
    results = []
    catalog_empty("bench-item-")
    tsv = files["Merchant Center TSV"]
    seconds, output = timed_import(tsv, *extra)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM graph_app_item WHERE external_id LIKE 'bench-item-%%'")
        stored = cursor.fetchone()[0]
    assert stored == args.items - rejected, (stored, output)
    results.append(("Merchant Center TSV into an empty catalog", tsv.stat().st_size, seconds, args.items / seconds))
    print("TSV, new items", f"{seconds:.2f} s", output.splitlines()[0], flush=True)
    for name, path in files.items():
        seconds, output = timed_import(path, *extra)
        label = name if "changed" in name else f"{name} again (no change)"
        updated = len(range(0, args.items, 10)) - len(range(0, args.items, BAD_EVERY)) if "changed" in name else 0
        assert f"created 0, updated {updated}, unchanged {args.items - rejected - updated}," in output, output
        results.append((label, path.stat().st_size, seconds, args.items / seconds))
        print(label, f"{seconds:.2f} s", output.splitlines()[0], flush=True)
    catalog_empty("bench-item-")

    if not args.skip_stock:
        big = feed(f"stock-{args.stock_items}.tsv", write_stock, args.stock_items)
        small = feed(f"stock-{args.stock_items // 10}.tsv", write_stock, args.stock_items // 10)
        for name, path, change_every in (
            ("stock feed TSV, 1 row in 10 a change", big, 10),
            ("the same stock feed again (no change)", big, 0),
            ("stock feed TSV, every row a change", small, 1),
        ):
            if change_every:
                catalog_empty("bench-stock-")
                changing = stock_catalog_make(path, change_every=change_every)
            else:
                changing = 0
            count = sum(1 for _ in path.open()) - 1
            seconds, output = timed_import(path, *extra)
            assert f"updated {changing}, unchanged {count - changing}, not in the catalog 0, rejected 0" in output, (
                output
            )
            results.append((name, path.stat().st_size, seconds, count / seconds))
            print(name, f"{seconds:.2f} s", output.splitlines()[1], flush=True)
        catalog_empty("bench-stock-")

    table = ["| feed | size | seconds | rows/s |", "|---|---|---|---|"]
    for name, size, seconds, rate in results:
        table.append(f"| {name} | {size / 2**20:.1f} MiB | {seconds:.2f} | {rate:,.0f} |")
    body = (
        f"{args.items:,} full rows (2k brands, 40 product types, 0.5 % rejected for a bad price) and a stock feed of "
        f"{args.stock_items:,} items, {batches}, {workers} worker process(es), PostgreSQL and Valkey on the same 2 "
        "cores; wall time of the command, including validation, the bulk catalog write (rows, brand entities and "
        "links, content vectors), the Redis online catalog and checkpoints. A row that repeats the catalog is "
        "compared (one read of the batch's items) and not written.\n\n"
        + "\n".join(table)
        + "\n\n"
        + goals(results)
        + NOTES
        + "- Load average (1, 5, 15 min) at the end of the run: "
        + ", ".join(f"{load:.1f}" for load in os.getloadavg())
        + "."
    )
    if args.no_record:
        print(body)
    else:
        record("Catalog feed import", "python benchmarks/import_items.py", body)
    if not os.environ.get("DATABASE_URL"):
        from personalization import embedded

        connection.close()
        embedded.stop_all(Path(os.environ["PERSONALIZATION_DATA_DIR"]))


if __name__ == "__main__":
    main()
