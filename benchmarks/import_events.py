"""Historical import rate: `manage.py import_events` on a synthetic 200k-event file, into the partitioned log.

Generates the file in a temporary folder (CSV, the same as gzipped CSV, and JSON lines: 20k users, 5k items, the
last 90 days, about 1 % bad rows), imports each into an empty log and reports rows per second end to end (read,
validate, deduplicate, store, checkpoint), then imports the CSV again (every event a duplicate). Runs against its
own embedded servers under .data/bench-import (unless DATABASE_URL / REDIS_URL are set) and empties the log and
the synthetic users afterwards. Results go to BENCHMARKS.md.

    .venv/bin/python benchmarks/import_events.py [--events 200000]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, django_setup, record

BENCH_DATA_DIR = ROOT / ".data" / "bench-import"
TYPES = ["view"] * 12 + ["click"] * 4 + ["add_to_cart"] * 2 + ["purchase", "search", "dwell", "save"]
FIELDS = ["event_id", "type", "user_id", "session_id", "item_id", "timestamp", "placement", "request_id", "slot",
          "value", "context"]  # fmt: skip


def synthetic_events(count: int, *, seed: int = 7) -> list[dict[str, object]]:
    generator = random.Random(seed)
    now = datetime.now(UTC)
    events: list[dict[str, object]] = []
    for index in range(count):
        kind = generator.choice(TYPES)
        event: dict[str, object] = {
            "event_id": f"bench-{index:08d}",
            "type": kind,
            "user_id": f"bench-user-{generator.randrange(20_000)}",
            "item_id": f"bench-sku-{generator.randrange(5_000)}" if kind != "search" else "",
            "timestamp": (now - timedelta(seconds=generator.randrange(90 * 86400))).isoformat(),
        }
        if generator.random() < 0.5:
            event.update(placement="home", request_id=f"req-{generator.randrange(10**9)}", slot=generator.randrange(20))
        if kind == "purchase":
            event["value"] = round(generator.uniform(1, 200), 2)
        if generator.random() < 0.3:
            event["context"] = {"device": generator.choice(["ios", "android", "web"]), "page": "/p/1"}
        if index % 100 == 99:
            event["timestamp"] = "yesterday"  # a bad row, rejected with its line number
        events.append(event)
    return events


def write_csv(events: list[dict[str, object]], path: Path, *, compressed: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for event in events:
        row = [event.get(name, "") for name in FIELDS]
        row[-1] = orjson.dumps(event["context"]).decode() if "context" in event else ""
        writer.writerow(row)
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data, compresslevel=6) if compressed else data)


def write_jsonl(events: list[dict[str, object]], path: Path) -> None:
    path.write_bytes(b"".join(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE) for event in events))


def log_empty() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM signals_app_event WHERE event_id LIKE 'bench-%%'")
        cursor.execute("DELETE FROM signals_app_eventid WHERE event_id LIKE 'bench-%%'")
        cursor.execute("DELETE FROM graph_app_shopper WHERE external_id LIKE 'bench-user-%%'")
        cursor.execute("VACUUM ANALYZE signals_app_event")
        cursor.execute("VACUUM ANALYZE signals_app_eventid")


def timed_import(path: Path, *extra: str) -> tuple[float, str]:
    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command("import_events", str(path), "--no-progress", "--restart", *extra, stdout=out)
    return time.perf_counter() - started, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(BENCH_DATA_DIR))
    django_setup()
    from django.core.management import call_command
    from django.db import connection

    from signals_app.importer import IMPORT_BATCH_SIZE

    call_command("migrate", verbosity=0)
    events = synthetic_events(args.events)
    rejected = sum(1 for event in events if event["timestamp"] == "yesterday")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "CSV": Path(folder) / "events.csv",
            "CSV, gzipped": Path(folder) / "events.csv.gz",
            "JSON lines": Path(folder) / "events.jsonl",
        }
        write_csv(events, files["CSV"])
        write_csv(events, files["CSV, gzipped"], compressed=True)
        write_jsonl(events, files["JSON lines"])
        for name, path in files.items():
            log_empty()
            seconds, output = timed_import(path)
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM signals_app_event WHERE event_id LIKE 'bench-%%'")
                stored = cursor.fetchone()[0]
            assert stored == args.events - rejected, (stored, output)
            rows.append((name, path.stat().st_size, seconds, args.events / seconds, stored / seconds))
            print(name, f"{seconds:.2f} s", f"{args.events / seconds:,.0f} rows/s", output.splitlines()[0])
        seconds, output = timed_import(files["CSV"])
        rows.append(("CSV again (all duplicates)", files["CSV"].stat().st_size, seconds, args.events / seconds, 0.0))
        print("CSV again", f"{seconds:.2f} s", output.splitlines()[0])
    log_empty()

    table = ["| input | size | seconds | rows read/s | events stored/s |", "|---|---|---|---|---|"]
    for name, size, seconds, rate, stored_rate in rows:
        table.append(f"| {name} | {size / 2**20:.1f} MiB | {seconds:.2f} | {rate:,.0f} | {stored_rate:,.0f} |")
    body = (
        f"{args.events:,} events (20k users, 5k items, over the last 90 days, so 4 monthly partitions; 1 % rejected "
        f"for a bad timestamp), batches of {IMPORT_BATCH_SIZE:,}, one process, the database on the same 2 cores; "
        "wall time of the command from an empty log, including validation, partition creation, deduplication by "
        "event id, shoppers and checkpoints.\n\n" + "\n".join(table) + "\n\n"
        "Target: at least 20,000 events/s. Shoppers are created with one `INSERT ... SELECT unnest(...) ON CONFLICT "
        "DO NOTHING` per batch (an ORM `bulk_create` there cost about a fifth of the time before)."
    )
    record("Historical event import", "python benchmarks/import_events.py", body)
    if not os.environ.get("DATABASE_URL"):
        from personalization import embedded

        connection.close()
        embedded.stop_all(Path(os.environ["PERSONALIZATION_DATA_DIR"]))


if __name__ == "__main__":
    main()
