"""Embedding training and neighbourhood refresh at 1,000,000 events: wall time and peak memory.

Fills its own embedded servers (under .data/bench-embeddings, unless DATABASE_URL / REDIS_URL are set) with a
synthetic catalog (20k items; 50 categories of uneven sizes, 20 brands each, 0-2 of 200 themes) and 1M events
(50k users of power-law activity, power-law item popularity, 60 % of a user's events in their favourite category,
a realistic type mix, over the last 120 days) written through `graph_app.state.log.event_log_append`. Then runs
`graph_app.training.embeddings_train()` and `graph_app.neighbourhoods.neighbourhoods_refresh()`, each in a fresh
process, and reports wall time and the process's peak RSS (`ru_maxrss`) next to its RSS before the step (the
PostgreSQL server's own memory is not included). The data is kept for the next run (`--regenerate` rebuilds it).
Results go to BENCHMARKS.md.

    .venv/bin/python benchmarks/embeddings_refresh.py [--events 1000000] [--regenerate]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, django_setup, record

BENCH_DATA_DIR = ROOT / ".data" / "bench-embeddings"
USERS = 50_000
ITEMS = 20_000
CATEGORIES = 50
BRANDS_PER_CATEGORY = 20
THEMES = 200
HISTORY_DAYS = 120
FAVOURITE_CATEGORY_SHARE = 0.6
TYPE_MIX = {
    "view": 0.62,
    "click": 0.15,
    "dwell": 0.05,
    "add_to_cart": 0.06,
    "remove_from_cart": 0.015,
    "purchase": 0.025,
    "save": 0.02,
    "share": 0.005,
    "skip": 0.05,
    "hide": 0.005,
}
APPEND_BATCH_SIZE = 20_000
SEED = 5


def power_law(count: int, exponent: float, generator: np.random.Generator) -> np.ndarray:
    weights = 1.0 / (np.arange(count) + 10.0) ** exponent
    return generator.permutation(weights / weights.sum())


def catalog_create(generator: np.random.Generator, *, items: int = ITEMS) -> tuple[np.ndarray, np.ndarray]:
    """Items and their entities; returns (item popularity, item category)."""
    from graph_app.models import Entity, Item, ItemEntity

    category_weights = power_law(CATEGORIES, 0.7, generator)
    categories = generator.choice(CATEGORIES, size=items, p=category_weights)
    brands = categories * BRANDS_PER_CATEGORY + generator.integers(0, BRANDS_PER_CATEGORY, items)
    Item.objects.bulk_create(
        [
            Item(
                external_id=f"bench-sku-{index}",
                title=f"Bench item {index}",
                description=f"Synthetic item {index} of brand {brands[index]}",
                category=f"category-{categories[index]}",
                price="9.99",
            )
            for index in range(items)
        ],
        batch_size=5000,
    )
    entities = [Entity(kind="category", external_id=f"category-{c}", name=f"Category {c}") for c in range(CATEGORIES)]
    entities += [
        Entity(kind="brand", external_id=f"brand-{b}", name=f"Brand {b}")
        for b in range(CATEGORIES * BRANDS_PER_CATEGORY)
    ]
    entities += [Entity(kind="theme", external_id=f"theme-{t}", name=f"Theme {t}") for t in range(THEMES)]
    Entity.objects.bulk_create(entities, batch_size=5000)
    item_pk = dict(Item.objects.filter(external_id__startswith="bench-sku-").values_list("external_id", "pk"))
    entity_pk = {
        f"{kind}:{external_id}": pk for pk, kind, external_id in Entity.objects.values_list("pk", "kind", "external_id")
    }
    links = []
    for index in range(items):
        pk = item_pk[f"bench-sku-{index}"]
        links.append(ItemEntity(item_id=pk, entity_id=entity_pk[f"category:category-{categories[index]}"]))
        links.append(ItemEntity(item_id=pk, entity_id=entity_pk[f"brand:brand-{brands[index]}"], weight=0.8))
        for theme in set(generator.integers(0, THEMES, generator.integers(0, 3)).tolist()):
            links.append(ItemEntity(item_id=pk, entity_id=entity_pk[f"theme:theme-{theme}"], weight=0.5))
    ItemEntity.objects.bulk_create(links, batch_size=5000)
    return power_law(items, 1.0, generator), categories


def events_generate(
    count: int,
    popularity: np.ndarray,
    categories: np.ndarray,
    generator: np.random.Generator,
    *,
    user_count: int = USERS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user index, item index, type index, seconds ago) per event; the catalog's size is len(popularity)."""
    item_count = len(popularity)
    users = generator.choice(user_count, size=count, p=power_law(user_count, 0.8, generator))
    favourite = generator.choice(
        CATEGORIES, size=user_count, p=np.bincount(categories, minlength=CATEGORIES) / item_count
    )
    items = generator.choice(item_count, size=count, p=popularity)
    in_favourite = np.flatnonzero(generator.random(count) < FAVOURITE_CATEGORY_SHARE)
    wanted = favourite[users[in_favourite]]
    for category in range(CATEGORIES):
        members = np.flatnonzero(categories == category)
        events = in_favourite[wanted == category]
        if len(members) and len(events):
            weights = popularity[members] / popularity[members].sum()
            items[events] = generator.choice(members, size=len(events), p=weights)
    types = generator.choice(len(TYPE_MIX), size=count, p=list(TYPE_MIX.values()))
    seconds_ago = generator.uniform(60, HISTORY_DAYS * 86400, count)
    return users, items, types, seconds_ago


def log_fill(count: int, *, items: int = ITEMS, users: int = USERS) -> float:
    from django.db import connection

    from graph_app.state.log import event_log_append, event_log_partitions_create, month_add, month_start
    from graph_app.state.records import EventInput, EventRecord

    generator = np.random.default_rng(SEED)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for table in ("signals_app_event", "signals_app_eventid", "graph_app_itementity", "graph_app_itemneighbour"):
            cursor.execute(f"TRUNCATE {table}")
        cursor.execute("DELETE FROM graph_app_entity")
        cursor.execute("DELETE FROM graph_app_item")
        cursor.execute("DELETE FROM graph_app_shopper")
    popularity, categories = catalog_create(generator, items=items)
    event_users, event_items, types, seconds_ago = events_generate(
        count, popularity, categories, generator, user_count=users
    )
    now = datetime.now(UTC)
    first_month = month_start(now - timedelta(days=HISTORY_DAYS))
    event_log_partitions_create(months=[month_add(first_month, offset) for offset in range(6)])
    type_names = list(TYPE_MIX)
    known_users: set[str] = set()
    for start in range(0, count, APPEND_BATCH_SIZE):
        batch = range(start, min(start + APPEND_BATCH_SIZE, count))
        records = [
            EventRecord(
                EventInput(
                    event_id=f"bench-{index:08d}",
                    type=type_names[types[index]],
                    user_id=f"bench-user-{event_users[index]}",
                    session_id="",
                    item_id=f"bench-sku-{event_items[index]}",
                    placement="",
                    request_id="",
                    slot=None,
                    value=None,
                    context={},
                    occurred_at=now - timedelta(seconds=float(seconds_ago[index])),
                ),
                received_at=now,
            )
            for index in batch
        ]
        event_log_append(records=records, known_user_ids=known_users)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE signals_app_event")
    return time.perf_counter() - started


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def step_run(step: str) -> None:
    """In a fresh process: run one step and print its figures as JSON (last line)."""
    django_setup()
    from django.db import connection

    from graph_app.neighbourhoods import neighbourhoods_refresh
    from graph_app.training import embeddings_train

    connection.ensure_connection()
    requests = _materialize_requests() if step == "materialize" else []
    before = rss_mib()
    started = time.perf_counter()
    if step == "train":
        report = embeddings_train().__dict__
    elif step == "neighbourhoods":
        report = neighbourhoods_refresh().__dict__
    else:
        from graph_app.features.offline import features_offline

        report = {"rows": len(features_offline(requests=requests))}
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak, "report": report}))


MATERIALIZE_ROWS = 10_000


def _materialize_requests() -> list[object]:
    """Training-row requests like the scheduled materialization makes: users with history, candidate items, now."""
    from datetime import UTC, datetime

    from django.db import connection

    from graph_app.features.offline import FeatureRequest

    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT user_id FROM signals_app_event WHERE user_id <> '' LIMIT 1000")
        users = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT external_id FROM graph_app_item ORDER BY external_id")
        items = [row[0] for row in cursor.fetchall()]
    as_of = datetime.now(UTC)
    generator = np.random.default_rng(7)
    return [
        FeatureRequest(users[index % len(users)], items[int(generator.integers(len(items)))], "home", as_of)
        for index in range(MATERIALIZE_ROWS)
    ]


def step_measure(step: str) -> dict[str, object]:
    output = subprocess.run(
        [sys.executable, __file__, "--step", step], check=True, capture_output=True, text=True, env=os.environ.copy()
    ).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    print(step, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--step", choices=["train", "neighbourhoods", "materialize"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(BENCH_DATA_DIR))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if args.step:
        step_run(args.step)
        return
    django_setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM signals_app_event WHERE event_id LIKE 'bench-%%'")
        stored = cursor.fetchone()[0]
    fill_seconds = None
    if args.regenerate or stored != args.events:
        fill_seconds = log_fill(args.events)
        print(f"log filled in {fill_seconds:.0f} s")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), "
            "count(DISTINCT (user_id, item_id)) FILTER (WHERE type = ANY(%s)) FROM signals_app_event",
            [[name for name in TYPE_MIX if name not in ("remove_from_cart", "skip", "hide")]],
        )
        events, users, items, pairs = cursor.fetchone()
    connection.close()

    train = step_measure("train")
    neighbourhoods = step_measure("neighbourhoods")
    materialize = step_measure("materialize")
    rows = [
        ("`embeddings_train()`", train, f"{train['report']['interactions']:,} user-item pairs, "
         f"{train['report']['collaborative_items']:,} items with history"),
        ("`neighbourhoods_refresh()`", neighbourhoods, f"{neighbourhoods['report']['neighbours']:,} neighbours "
         f"({neighbourhoods['report']['entity_neighbours']:,} entity, "
         f"{neighbourhoods['report']['co_occurrence_neighbours']:,} co-occurrence), "
         f"{neighbourhoods['report']['users']:,} users in the 90-day window"),
        ("offline feature materialization (`features_offline`)", materialize,
         f"{materialize['report']['rows']:,} point-in-time rows (1,000 users x random items), all 12 features"),
    ]  # fmt: skip
    table = ["| step | wall time | RSS before | peak RSS | |", "|---|---|---|---|---|"]
    for name, figures, note in rows:
        table.append(
            f"| {name} | {figures['seconds']:.1f} s | {figures['rss_before_mib']:.0f} MiB | "
            f"{figures['peak_rss_mib']:.0f} MiB | {note} |"
        )
    body = (
        f"{events:,} events in the log ({users:,} users, {items:,} items; {pairs:,} distinct user-item pairs of "
        f"positive-weight types), synthetic: power-law user activity and item popularity, "
        f"{FAVOURITE_CATEGORY_SHARE:.0%} of a user's events in a favourite category, types "
        + ", ".join(f"{name} {share:.1%}" for name, share in TYPE_MIX.items())
        + f", over {HISTORY_DAYS} days; {ITEMS:,} items with a category, a brand and 0-2 themes. Each step runs in "
        "a fresh process (one BLAS thread, as the worker runs it), with PostgreSQL and Valkey on the same 2 cores; "
        "peak RSS is the Python process's `ru_maxrss` (the database server's memory is not included)."
        + (f" Writing the log through `event_log_append` took {fill_seconds:.0f} s." if fill_seconds else "")
        + "\n\n"
        + "\n".join(table)
        + "\n\nThe synthetic behaviour has no item-to-item structure beyond favourite categories, so co-occurrence "
        "cosines stay low and brand-mates (about 20 an item, sharing category and brand) fill most neighbour lists; "
        "on the demo data (real purchases) about a quarter of the neighbours come from co-occurrence."
    )
    record(
        "Embedding training, neighbourhood refresh and feature materialization at 1M events",
        f"python benchmarks/embeddings_refresh.py --events {args.events}",
        body,
    )
    if not os.environ.get("DATABASE_URL"):
        from personalization import embedded

        embedded.stop_all(Path(os.environ["PERSONALIZATION_DATA_DIR"]))


if __name__ == "__main__":
    main()
