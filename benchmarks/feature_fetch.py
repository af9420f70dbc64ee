"""Graph-layer read benchmark: a user's state plus the features of 500 candidate items, as the ranker needs them
(`graph_app.features.online.features_fetch`: two pipelined Redis round trips, numpy decoding).

Runs on the demo data (loaded if the database is empty) in its own data folder, with users that have history.

    .venv/bin/python benchmarks/feature_fetch.py [--fetches 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault(
    "PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-features")
)
from benchmarks.common import django_setup, percentile, record

CANDIDATES = 500


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fetches", type=int, default=1000)
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from graph_app.features.definitions import FEATURE_NAMES
    from graph_app.features.online import catalog_facts_forget, features_fetch
    from graph_app.models import Item, Shopper
    from operations.bootstrap import platform_bootstrap

    call_command("migrate", verbosity=0)
    platform_bootstrap()
    items = list(Item.objects.order_by("external_id").values_list("external_id", flat=True)[:CANDIDATES])
    users = list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[:200])

    def measure(kept: int) -> dict[str, float]:
        settings.FEATURE_CATALOG_CACHE_ITEMS = kept
        catalog_facts_forget()
        for user in users[:20]:  # warm-up
            features_fetch(user_key=user, item_ids=items, placement="home", now=time.time())
        latencies = []
        for index in range(args.fetches):
            started = time.perf_counter()
            matrix = features_fetch(
                user_key=users[index % len(users)], item_ids=items, placement="home", now=time.time()
            )
            latencies.append((time.perf_counter() - started) * 1000)
        assert matrix.values.shape == (len(items), len(FEATURE_NAMES))
        return {
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2),
        }

    read = measure(0)
    kept = measure(50_000)
    print("catalog facts read every time", read)
    print("catalog facts kept", kept)
    body = (
        f"{args.fetches} fetches, one after another in one process, of {len(items)} candidates x "
        f"{len(FEATURE_NAMES)} features for users with history (demo data), {settings.EVENT_PARTITIONS} event "
        "partition(s), embedded Valkey on the same 2 cores.\n\n"
        "| measurement | p50 | p99 | mean |\n|---|---|---|---|\n"
        f"| user state + features of {len(items)} candidates, every catalog fact read from Redis "
        f"(`FEATURE_CATALOG_CACHE_ITEMS=0`) | {read['p50_ms']} ms | {read['p99_ms']} ms | {read['mean_ms']} ms |\n"
        f"| the same, the catalog facts kept in process (the default; valid until the catalog changes) | "
        f"{kept['p50_ms']} ms | {kept['p99_ms']} ms | {kept['mean_ms']} ms |\n\n"
        "Goal (issue 4): p99 <= 5 ms (the Graph layer's budget is 20 ms). One pipelined round trip: the catalog's "
        "version, the user's affinity hash, recent items and their time, one HMGET of the ids per item structure "
        "(packed static facts, float32 embeddings, entity keys: only for the items whose facts the process does "
        "not keep for the current catalog version; and per event partition the packed popularity counters and "
        "the placement's click and impression counters); a second round trip reads the embeddings of the user's "
        "recent items unless the caller passed them (serving does). With N partitions the two counter HMGETs fan "
        "out over N hashes: on a single Redis node one partition is the right setting; a Redis Cluster deployment "
        "trades some of this latency for write scale-out."
    )
    record("Graph layer: feature fetch", "python benchmarks/feature_fetch.py", body)


if __name__ == "__main__":
    main()
