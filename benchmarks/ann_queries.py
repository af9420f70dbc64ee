"""pgvector: what serving's own nearest-neighbour queries cost PostgreSQL at each hnsw.ef_search.

`vector_recall.py` chose ef_search for queries of 10 rows. Serving asks for more: the user-vector source 120 rows, the
similar-to-recent fallback and a product page's similar items 100, each with the in-stock filter. Below about
rows / share in stock, the relaxed iterative scan needs a second round. This runs the three queries exactly as
serving sends them (`scoring_app.engine.retrieval`) against the end-to-end benchmark's catalog (100,000 items, 64
dimensions; run `recommendations_e2e.py` once first), alternating the settings in rounds on fresh users and items,
and reads the CPU the PostgreSQL backend spent from /proc (the database runs on this machine).

    .venv/bin/python benchmarks/ann_queries.py [--per-round 250] [--rounds 3] [--ef-search 100,150,200] [--no-record]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-e2e"))
from benchmarks.common import django_setup, percentile, record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-round", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ef-search", default="100,150,200")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    django_setup()
    from django.db import connection

    from graph_app import catalog_queries
    from scoring_app.engine import retrieval

    settings_tried = [int(value) for value in args.ef_search.split(",")]
    needed = args.per_round * args.rounds * len(settings_tried)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM graph_app_item WHERE embedding IS NOT NULL")
        items_count = cursor.fetchone()[0]
        if items_count < 1000:
            sys.exit("run benchmarks/recommendations_e2e.py first: it fills the catalog this measures")
        cursor.execute(
            "SELECT external_id FROM graph_app_shopper WHERE embedding IS NOT NULL ORDER BY random() LIMIT %s", [needed]
        )
        users = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT external_id FROM graph_app_item WHERE embedding IS NOT NULL ORDER BY random() LIMIT %s", [needed]
        )
        items = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    if len(users) < needed or len(items) < needed:
        sys.exit(f"not enough users or items for {needed} queries of each kind")

    def backend_cpu_seconds() -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    recent = retrieval.RECENT_ITEMS_USED
    queries = {
        "user vector (120 rows)": (
            catalog_queries.USER_VECTOR_SQL,
            lambda index: {"user": users[index], "recent": [], "k": retrieval.USER_VECTOR_NEIGHBOURS + recent},
        ),
        "similar to recent items (100 rows)": (
            catalog_queries.SIMILAR_TO_RECENT_SQL,
            lambda index: {"recent": items[index : index + 5], "k": retrieval.SIMILAR_TO_RECENT_CACHED},
        ),
        "similar items (100 rows)": (
            catalog_queries.SIMILAR_TO_ITEM_SQL,
            lambda index: {"item": items[index], "k": retrieval.SIMILAR_ITEMS_CACHED},
        ),
    }
    cpu: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    offset = 0
    with connection.cursor() as cursor:
        for _ in range(args.rounds):
            for ef_search in settings_tried:
                cursor.execute(f"SET hnsw.ef_search = {ef_search}")
                for name, (sql, params) in queries.items():
                    started_cpu = backend_cpu_seconds()
                    for index in range(offset, offset + args.per_round):
                        started = time.perf_counter()
                        cursor.execute(sql, params(index))
                        cursor.fetchall()
                        wall.setdefault((name, ef_search), []).append((time.perf_counter() - started) * 1000)
                    spent = (backend_cpu_seconds() - started_cpu) / args.per_round * 1000
                    cpu.setdefault((name, ef_search), []).append(spent)
                offset += args.per_round
    header = "| query | " + " | ".join(f"ef_search {value}" for value in settings_tried) + " |"
    lines = [header, "|---|" + "---|" * len(settings_tried)]
    for name in queries:
        cells = []
        for ef_search in settings_tried:
            spent = cpu[(name, ef_search)]
            times = wall[(name, ef_search)]
            cells.append(
                f"{min(spent):.2f} to {max(spent):.2f} ms CPU · p50 / p99 {percentile(times, 0.5):.2f} / "
                f"{percentile(times, 0.99):.2f} ms"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    body = (
        f"{items_count:,} items with a 64-dimension embedding (the end-to-end benchmark's catalog, 90% in stock), "
        f"HNSW m=16, iterative scan relaxed_order. Each cell: the PostgreSQL backend's CPU per query (user + system "
        f"from /proc, the range over {args.rounds} rounds of {args.per_round} queries, the settings alternating "
        "round by round on fresh users and items), then the latency the client saw. The queries are serving's own "
        "SQL with its row counts.\n\n" + "\n".join(lines) + "\n"
    )
    print(body)
    if not args.no_record:
        record("pgvector: serving's nearest-neighbour queries and ef_search", "python benchmarks/ann_queries.py", body)


if __name__ == "__main__":
    main()
