"""Catalog writes through the real HTTP endpoints, served by gunicorn as `make run` starts it.

A deterministic generated catalog (`--items`, 100,000 by default) goes through the batch endpoints in batches of
`--batch` (1,000): created (`POST /api/v1/items/batch`), upserted again unchanged, then with one price in ten
changed, patched (`PATCH`: price and stock of all) and deleted (`POST /api/v1/items/batch/delete`), `--clients`
clients each sending one batch after another; items/s and the batch latency per phase.

Old vs new (`--old-tree`, a `git worktree add` checkout of the code before the bulk write path): both servers
run side by side against the same PostgreSQL and Redis, and alternate batch by batch on batches of their own
(`--compare-batches` creates, then the same items upserted again).

Cold items (part of the catalog being loaded): after one more batch, the time from its 200 to the first answer
that contains one of its items, polled every 50 ms: GET /api/v1/recommendations (the `fresh` source) for a user
who was served before the batch and for new users, and GET /api/v1/items/{id}/similar of an item whose content
is alike (its similar list read, so cached, before the batch).

    .venv/bin/python benchmarks/catalog_batch.py --old-tree /tmp/old-catalog --record
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, django_setup, free_port, percentile, record, wait_for_http

# Its own embedded stores (unless DATABASE_URL / REDIS_URL are set), never the ones `make run` uses.
os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(ROOT / ".data" / "bench-catalog"))

SECTION = "Catalog writes in bulk: the batch endpoints"
SEED = 19
PREFIX = "bench-cat-"
_WORDS_TEXT = (
    "red blue green black white linen wool cotton oak steel glass ceramic mug bowl plate lamp chair table rug "
    "cushion throw vase candle frame mirror shelf basket jug tray clock kettle pan knife spoon fork cup saucer "
    "teapot jar tin box bag scarf hat glove sock shirt dress coat boot shoe belt wallet watch ring necklace"
)
WORDS = tuple(_WORDS_TEXT.split(" "))
COLOURS = ("red", "blue", "green", "black", "white", "grey", "yellow")
POLL_SECONDS = 0.05
COLD_TIMEOUT_SECONDS = 30.0


def item_row(n: int, *, prefix: str = PREFIX, title_suffix: str = "") -> dict[str, Any]:
    """Item n of the generated catalog (the same on every run)."""
    rng = random.Random(n * 7919 + SEED)
    words = rng.sample(WORDS, 3)
    return {
        "item_id": f"{prefix}{n:07d}",
        "title": " ".join(words).capitalize() + title_suffix,
        "description": " ".join(rng.choices(WORDS, k=20)),
        "category": f"category-{n % 50}",
        "price": f"{rng.randint(1, 500)}.{rng.randint(0, 99):02d}",
        "in_stock": rng.random() > 0.1,
        "attributes": {"colour": rng.choice(COLOURS), "size": rng.choice("SMLX"), "rating": rng.randint(1, 5)},
        "entities": [
            {"kind": "brand", "id": f"brand-{n % 500}", "name": f"Brand {n % 500}"},
            {"kind": "tag", "id": words[0], "weight": 0.5},
        ],
    }


class Client:
    """One keep-alive connection (reopened when gunicorn's sync worker closes it)."""

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def server_start(tree: Path, port: int, workers: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    metrics_dir = tempfile.mkdtemp(prefix="bench-catalog-metrics-")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with log.open("wb") as stream:
        return subprocess.Popen(
            [str(gunicorn), "config.wsgi:application", "--config", "python:config.gunicorn", "--chdir", str(tree),
             "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "--timeout", "300"],
            cwd=tree, env={**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}, stdout=subprocess.DEVNULL, stderr=stream,
        )  # fmt: skip


def timed(client: Client, method: str, path: str, body: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    status, answer = client.request(method, path, body)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {str(answer)[:300]}")
    return elapsed, answer


def phase(clients: list[Client], method: str, path: str, bodies: list[Any], items: int) -> dict[str, float]:
    """The bodies sent by the clients in parallel (each one batch after another)."""
    pending = iter(bodies)
    lock = threading.Lock()
    latencies: list[float] = []

    def send(client: Client) -> None:
        while True:
            with lock:
                body = next(pending, None)
            if body is None:
                return
            latencies.append(timed(client, method, path, body)[0])

    started = time.perf_counter()
    with ThreadPoolExecutor(len(clients)) as pool:
        for sent in [pool.submit(send, client) for client in clients]:
            sent.result()
    elapsed = time.perf_counter() - started
    return {
        "items": items,
        "seconds": round(elapsed, 2),
        "items_per_s": round(items / elapsed),
        "p50_batch_ms": round(statistics.median(latencies) * 1000),
        "p99_batch_ms": round(percentile(latencies, 0.99) * 1000),
    }


def catalog_phases(
    clients: list[Client], items: int, batch: int, *, create_only: bool = False
) -> dict[str, dict[str, float]]:
    starts = range(0, items, batch)
    rows = [[item_row(n) for n in range(start, min(start + batch, items))] for start in starts]
    results = {"create": phase(clients, "POST", "/api/v1/items/batch", [{"items": chunk} for chunk in rows], items)}
    if create_only:
        return results
    results["upsert again, unchanged"] = phase(
        clients, "POST", "/api/v1/items/batch", [{"items": chunk} for chunk in rows], items
    )
    # A nightly feed: one item in ten has a new price.
    repriced = [
        [{**row, "price": f"{n % 400 + 1}.49"} if n % 10 == 0 else row for n, row in enumerate(chunk)] for chunk in rows
    ]
    results["upsert again, 10% repriced"] = phase(
        clients, "POST", "/api/v1/items/batch", [{"items": chunk} for chunk in repriced], items
    )
    patches = [
        {"items": [{"item_id": row["item_id"], "price": "9.99", "in_stock": n % 3 != 0} for n, row in enumerate(chunk)]}
        for chunk in rows
    ]
    results["patch price and stock (all)"] = phase(clients, "PATCH", "/api/v1/items/batch", patches, items)
    return results


def deletes_phase(clients: list[Client], items: int, batch: int) -> dict[str, float]:
    bodies = [
        {"item_ids": [f"{PREFIX}{n:07d}" for n in range(start, min(start + batch, items))]}
        for start in range(0, items, batch)
    ]
    return phase(clients, "POST", "/api/v1/items/batch/delete", bodies, items)


def compare(clients: dict[str, Client], batches: int, batch: int) -> dict[str, dict[str, list[float]]]:
    """Old and new alternating batch by batch (which goes first alternates too), each on items of its own."""
    seconds: dict[str, dict[str, list[float]]] = {label: {"create": [], "update": []} for label in clients}
    labels = list(clients)
    for round_ in range(batches):
        for label in labels if round_ % 2 == 0 else labels[::-1]:
            rows = [item_row(n, prefix=f"cmp-{label}-{round_}-") for n in range(batch)]
            seconds[label]["create"].append(timed(clients[label], "POST", "/api/v1/items/batch", {"items": rows})[0])
            seconds[label]["update"].append(timed(clients[label], "POST", "/api/v1/items/batch", {"items": rows})[0])
    return seconds


def first_answer_containing(ask: Any, wanted: set[str]) -> tuple[float | None, int]:
    """Seconds until `ask()` (a set of item ids) shares an id with `wanted`, polling; None if not within the
    timeout. Also the number of polls."""
    started = time.perf_counter()
    polls = 0
    while time.perf_counter() - started < COLD_TIMEOUT_SECONDS:
        polls += 1
        if ask() & wanted:
            return round(time.perf_counter() - started, 3), polls
        time.sleep(POLL_SECONDS)
    return None, polls


def cold_items(client: Client, items: int) -> tuple[dict[str, Any], list[float]]:
    """The time from a batch's 200 to the first answer containing one of its items; and the two 1,000-item
    batches' own seconds (creates into the catalog as it is)."""

    def recommended(user: str) -> set[str]:
        status, answer = client.request("GET", f"/api/v1/recommendations?user_id={user}&k=50")
        assert status == 200, answer
        return {entry["item_id"] for entry in answer["items"]}

    def similar_to(item_id: str) -> set[str]:
        status, answer = client.request("GET", f"/api/v1/items/{item_id}/similar?k=10")
        assert status == 200, answer
        return {entry["item_id"] for entry in answer["items"]}

    results: dict[str, Any] = {}
    # Recommendations: a user served before the batch (its caches warm), then new users (one per poll).
    served_user = "bench-cold-user"
    recommended(served_user)
    rows = [item_row(items + n, prefix=f"{PREFIX}cold-a-") for n in range(1000)]
    rows = [{**row, "in_stock": True} for row in rows]
    batch_seconds = [timed(client, "POST", "/api/v1/items/batch", {"items": rows})[0]]
    wanted = {row["item_id"] for row in rows}
    results["recommendations, a user served before"] = first_answer_containing(lambda: recommended(served_user), wanted)
    counter = iter(range(10**6))
    rows = [{**item_row(items + n, prefix=f"{PREFIX}cold-b-"), "in_stock": True} for n in range(1000)]
    batch_seconds.append(timed(client, "POST", "/api/v1/items/batch", {"items": rows})[0])
    wanted = {row["item_id"] for row in rows}
    results["recommendations, new users"] = first_answer_containing(
        lambda: recommended(f"bench-cold-new-{next(counter)}"), wanted
    )
    # Similar items: item 7's twin (same content, another id) added; item 7's list read first, so cached.
    related = f"{PREFIX}{7:07d}"
    similar_to(related)
    twin = {**item_row(7, prefix=f"{PREFIX}twin-"), "in_stock": True}
    timed(client, "POST", "/api/v1/items/batch", {"items": [twin]})
    results["similar of a related item (its list cached before)"] = first_answer_containing(
        lambda: similar_to(related), {twin["item_id"]}
    )
    return results, [round(seconds, 3) for seconds in batch_seconds]


def bench_items_delete() -> int:
    from django.db import connection

    from graph_app.catalog_bulk import items_delete_many

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT external_id FROM graph_app_item WHERE external_id LIKE %s OR external_id LIKE 'cmp-%%'",
            [PREFIX + "%"],
        )
        ids = [row[0] for row in cursor.fetchall()]
    for start in range(0, len(ids), 5000):
        items_delete_many(external_ids=ids[start : start + 5000])
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (make run: 2)")
    parser.add_argument("--new-tree", type=Path, default=ROOT, help="the checkout the new server runs")
    parser.add_argument("--old-tree", type=Path, help="a checkout of the code before the bulk write path")
    parser.add_argument("--compare-batches", type=int, default=4)
    parser.add_argument("--clients", type=int, default=1, help="clients sending batches in parallel (phases)")
    parser.add_argument("--record", action="store_true", help="write the figures to BENCHMARKS.md")
    parser.add_argument(
        "--create-only", action="store_true", help="only the create phase (new items through POST), no cold items"
    )
    parser.add_argument(
        "--cold-only", action="store_true",
        help="only the cold-item measurement, e.g. on a loaded store: PERSONALIZATION_DATA_DIR=.data/bench-scale",
    )  # fmt: skip
    args = parser.parse_args()

    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    removed = bench_items_delete()
    key = api_key_create(name="bench catalog", scope="server", rate_limit_per_second=1_000_000).raw_key
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    logs = Path(settings.DATA_DIR)
    trees = {"new": args.new_tree} | ({"old": args.old_tree} if args.old_tree else {})
    ports = {label: free_port() for label in trees}
    servers = {
        label: server_start(tree, ports[label], args.workers, env, logs / f"bench-catalog-{label}.log")
        for label, tree in trees.items()
    }
    try:
        for port in ports.values():
            wait_for_http(port, timeout=120)
        clients = {label: Client(ports[label], key) for label in trees}
        comparison = compare(clients, args.compare_batches, args.batch) if args.old_tree else None
        senders = [clients["new"]] + [Client(ports["new"], key) for _ in range(args.clients - 1)]
        if args.cold_only:  # the item whose similar list is read, in a catalog loaded by other means
            timed(clients["new"], "POST", "/api/v1/items/batch", {"items": [{**item_row(7), "in_stock": True}]})
            phases = {}
        else:
            phases = catalog_phases(senders, args.items, args.batch, create_only=args.create_only)
        cold, cold_batch_seconds = ({}, []) if args.create_only else cold_items(clients["new"], args.items)
        if not args.cold_only:
            phases["delete"] = deletes_phase(senders, args.items, args.batch)
    finally:
        for server in servers.values():
            server.terminate()
            server.wait()
    removed += bench_items_delete()
    result = {
        "phases": phases, "cold": cold, "cold_batch_seconds": cold_batch_seconds, "comparison": comparison,
        "removed_before_and_after": removed,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.record:
        record(SECTION, "python benchmarks/catalog_batch.py " + " ".join(sys.argv[1:]), report(args, result))


def report(args: argparse.Namespace, result: dict[str, Any]) -> str:
    lines = [
        f"{args.items:,} generated items (3 words of title, 20 of description, category, brand and tag entities, 3 "
        f"attributes) in batches of {args.batch:,}, {args.clients} client(s) each sending one batch after another; "
        f"gunicorn, {args.workers} sync workers; embedded PostgreSQL 18 and Valkey on the same machine.",
        "",
        "| phase | items/s | p50 batch ms | p99 batch ms | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, figures in result["phases"].items():
        lines.append(
            f"| {name} | {figures['items_per_s']:,} | {figures['p50_batch_ms']:,} | {figures['p99_batch_ms']:,} | "
            f"{figures['seconds']} |"
        )
    if result["comparison"]:
        lines += ["", f"Old vs new, alternating batch by batch ({args.compare_batches} batches of {args.batch:,} "
                  "each):", "", "| code | create items/s | update items/s |", "|---|---|---|"]  # fmt: skip
        for label, seconds in result["comparison"].items():
            create = args.batch * len(seconds["create"]) / sum(seconds["create"])
            update = args.batch * len(seconds["update"]) / sum(seconds["update"])
            lines.append(f"| {label} | {create:,.0f} | {update:,.0f} |")
    lines += ["", "Cold items: from the batch's 200 to the first answer containing one of its items (polled every "
              f"{POLL_SECONDS * 1000:.0f} ms; timeout {COLD_TIMEOUT_SECONDS:.0f} s):", "",
              "| read | seconds | polls |", "|---|---|---|"]  # fmt: skip
    for name, (seconds, polls) in result["cold"].items():
        lines.append(f"| {name} | {'not within the timeout' if seconds is None else seconds} | {polls} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
