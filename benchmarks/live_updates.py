"""Live shelf updates end to end: how long after an event's 202 (or a catalog change's 200) the WebSocket
subscriber has its new slate.

Runs the real servers as `make run` does, in its own data dir (.data/bench-live, unless DATABASE_URL / REDIS_URL
are set) with the demo data: gunicorn (`config.gunicorn`, 2 sync workers) for the API and uvicorn (`config.asgi`)
for the WebSockets. This process is the client: it opens --sockets WebSockets (one user each, placement home),
then
1. user events: POSTs single view events at a fixed --rate (open loop, users in turn, so a user has at most one
   event in flight) and, for each, measures from the 202 to the `recommendations` message pushed to that user's
   socket (a push that arrives before the 202 counts as 0);
2. stock changes: puts an item shown on some shelves out of stock (PUT /api/v1/items/{id}) and measures from the
   200 to the push of a slate without it on every socket that showed it; then puts it back in stock and measures
   the pushes of the slates it re-enters.

--ws-workers runs more uvicorn processes than `make run`'s one (each assembles one slate at a time).

    .venv/bin/python benchmarks/live_updates.py [--sockets 50] [--rate 20] [--seconds 30] [--changes 30]
        [--ws-workers 1] [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-live"))
from benchmarks.common import django_setup, free_port, percentile, record, start_process, wait_for_http

PUSH_TIMEOUT_SECONDS = 3.0
# After a stock change, pushes are awaited this long before the next change.
SETTLE_SECONDS = 1.0


@dataclass
class Shelf:
    """One WebSocket: the slate it shows and every push it received (arrival time, item ids)."""

    user: str
    items: tuple[str, ...] = ()
    pushes: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    # What degraded in the pushed slates (e.g. a retrieval source late), and in how many.
    degraded: Counter[str] = field(default_factory=Counter)
    degraded_pushes: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


async def http_request(port: int, method: str, path: str, key: str, body: Any = None) -> tuple[int, bytes, float]:
    """One request on its own connection (gunicorn's sync workers close it after the response); returns the
    status, the body and when the response was complete."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    data = await reader.readexactly(length) if length else b""
    done = time.perf_counter()
    writer.close()
    return int(status_line.split()[1]), data, done


async def shelf_open(ws_port: int, key: str, user: str) -> tuple[Shelf, Any, asyncio.Task[None]]:
    from websockets.asyncio.client import connect

    shelf = Shelf(user)
    socket = await connect(
        f"ws://127.0.0.1:{ws_port}/ws/v1/recommendations/?api_key={key}&user_id={user}&placement=home"
    )
    first = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
    shelf.items = tuple(item["item_id"] for item in first["items"])

    async def read() -> None:
        async for raw in socket:
            arrived = time.perf_counter()
            message = json.loads(raw)
            if message.get("type") == "recommendations":
                shelf.items = tuple(item["item_id"] for item in message["items"])
                shelf.pushes.append((arrived, shelf.items))
                shelf.degraded.update(reason.split(":")[0] for reason in message["degraded"])
                shelf.degraded_pushes += bool(message["degraded"])
                shelf.arrived.set()

    return shelf, socket, asyncio.create_task(read())


def summary(latencies: list[float], expected: int) -> dict[str, float]:
    if not latencies:
        return {
            "pushes": 0,
            "expected": expected,
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "max_ms": float("nan"),
        }
    return {
        "pushes": len(latencies),
        "expected": expected,
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(max(latencies), 1),
    }


async def user_events(
    port: int, key: str, shelves: list[Shelf], items: list[str], rate: float, seconds: float
) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    total = int(rate * seconds)
    start = time.perf_counter() + 0.5
    latencies: list[float] = []
    early = [0]
    errors = [0]

    async def one(index: int) -> None:
        shelf = shelves[index % len(shelves)]
        await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
        before = len(shelf.pushes)
        shelf.arrived.clear()
        event = {"event_id": f"live-{run}-{index}", "type": "view", "user_id": shelf.user,
                 "item_id": random.choice(items)}  # fmt: skip
        status, _, accepted_at = await http_request(port, "POST", "/api/v1/events", key, event)
        if status != 202:
            errors[0] += 1
            return
        deadline = accepted_at + PUSH_TIMEOUT_SECONDS
        while len(shelf.pushes) == before and time.perf_counter() < deadline:
            shelf.arrived.clear()
            try:
                await asyncio.wait_for(shelf.arrived.wait(), timeout=max(0.0, deadline - time.perf_counter()))
            except TimeoutError:
                break
        if len(shelf.pushes) > before:
            pushed_at = shelf.pushes[before][0]
            early[0] += pushed_at < accepted_at
            latencies.append(max(0.0, pushed_at - accepted_at) * 1000)

    await asyncio.gather(*(one(index) for index in range(total)))
    return {**summary(latencies, total), "before_202": early[0], "errors": errors[0]}


async def stock_changes(port: int, key: str, shelves: list[Shelf], changes: int) -> tuple[dict[str, float], ...]:
    out_latencies: list[float] = []
    back_latencies: list[float] = []
    expected_out = 0
    used: set[str] = set()
    for _ in range(changes):
        shown: dict[str, list[Shelf]] = {}
        for shelf in shelves:
            for item_id in shelf.items:
                shown.setdefault(item_id, []).append(shelf)
        # The item on most shelves (each once): the worst case, every one of them is served again at once.
        item_id = max(set(shown) - used or shown, key=lambda item: (len(shown[item]), item))
        used.add(item_id)
        affected = shown[item_id]
        expected_out += len(affected)
        status, raw, _ = await http_request(port, "GET", f"/api/v1/items/{item_id}", key)
        assert status == 200, (status, raw)
        item = json.loads(raw)
        body = {name: item[name] for name in ("title", "description", "category", "price", "attributes")}
        body["entities"] = item["entities"]

        marks = {id(shelf): len(shelf.pushes) for shelf in shelves}
        status, raw, changed_at = await http_request(
            port, "PUT", f"/api/v1/items/{item_id}", key, {**body, "in_stock": False}
        )
        assert status == 200, (status, raw)
        await asyncio.sleep(SETTLE_SECONDS)
        for shelf in affected:
            gone = [at for at, items in shelf.pushes[marks[id(shelf)] :] if item_id not in items]
            if gone:
                out_latencies.append(max(0.0, gone[0] - changed_at) * 1000)

        marks = {id(shelf): len(shelf.pushes) for shelf in shelves}
        status, raw, restocked_at = await http_request(
            port, "PUT", f"/api/v1/items/{item_id}", key, {**body, "in_stock": True}
        )
        assert status == 200, (status, raw)
        await asyncio.sleep(SETTLE_SECONDS)
        for shelf in shelves:
            back = [at for at, items in shelf.pushes[marks[id(shelf)] :] if item_id in items]
            if back:
                back_latencies.append(max(0.0, back[0] - restocked_at) * 1000)
    return summary(out_latencies, expected_out), summary(back_latencies, expected_out)


async def measure(
    args: argparse.Namespace, port: int, ws_port: int, key: str, users: list[str], items: list[str]
) -> dict[str, Any]:
    opened = [await shelf_open(ws_port, key, user) for user in users]
    shelves = [shelf for shelf, _, _ in opened]
    try:
        # Warm-up: every user once, so the measured pushes are not the process's first slates.
        await user_events(port, key, shelves, items, rate=min(args.rate, 20), seconds=len(shelves) / min(args.rate, 20))
        events = await user_events(port, key, shelves, items, rate=args.rate, seconds=args.seconds)
        print("user events", events)
        out_of_stock, back_in_stock = await stock_changes(port, key, shelves, args.changes)
        print("out of stock", out_of_stock)
        print("back in stock", back_in_stock)
        degraded: Counter[str] = sum((shelf.degraded for shelf in shelves), Counter())
        share_degraded = sum(shelf.degraded_pushes for shelf in shelves) / max(1, sum(len(s.pushes) for s in shelves))
        print(f"pushed slates degraded: {share_degraded:.0%}", dict(degraded))
    finally:
        for _, socket, reader in opened:
            reader.cancel()
            await socket.close()
    return {"events": events, "out_of_stock": out_of_stock, "back_in_stock": back_in_stock, "degraded": share_degraded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20, help="user events per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--changes", type=int, default=30, help="stock changes (each out, then back in)")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--ws-workers", type=int, default=1, help="uvicorn processes (`make run` runs one)")
    parser.add_argument("--no-record", action="store_true", help="print the figures without writing BENCHMARKS.md")
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from graph_app.models import Item, Shopper
    from operations.bootstrap import platform_bootstrap
    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    platform_bootstrap()
    key = api_key_create(name="live updates benchmark").raw_key
    users = list(Shopper.objects.order_by("external_id").values_list("external_id", flat=True)[: args.sockets])
    items = list(Item.objects.filter(in_stock=True).values_list("external_id", flat=True))
    connection.close()

    metrics_dir = tempfile.mkdtemp(prefix="bench-live-metrics-")
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL,
           "PROMETHEUS_MULTIPROC_DIR": metrics_dir}  # fmt: skip
    bin_dir = Path(sys.executable).parent
    port, ws_port = free_port(), free_port()
    servers = [
        start_process(
            [str(bin_dir / "gunicorn"), "config.wsgi:application", "--config", "python:config.gunicorn", "--workers",
             str(args.web_workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
            env,
        ),
        start_process(
            [str(bin_dir / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1", "--port", str(ws_port),
             "--log-level", "warning", "--workers", str(args.ws_workers)],
            env,
        ),
    ]  # fmt: skip
    try:
        wait_for_http(port, timeout=60)
        wait_for_http(ws_port, timeout=60)
        results = asyncio.run(measure(args, port, ws_port, key, users, items))
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait()

    events, out, back = results["events"], results["out_of_stock"], results["back_in_stock"]
    share_degraded = results["degraded"]
    body = (
        f"The demo catalog ({len(items)} items in stock); {len(users)} WebSockets (one user each, placement home) on "
        f"{args.ws_workers} uvicorn process(es), the API on gunicorn ({args.web_workers} sync workers, "
        "`config.gunicorn`), the client in a separate process on the same 2 cores with embedded Valkey and "
        "PostgreSQL. Latency runs from the client receiving the HTTP response to it receiving the pushed "
        "`recommendations` message (a push that arrives before the response counts as 0). Pushed slates that "
        f"degraded (a retrieval source late, a fallback): {share_degraded:.0%}.\n\n"
        "| trigger | pushes / expected | p50 | p99 | max |\n|---|---|---|---|---|\n"
        f"| a view event, open loop at {args.rate:g}/s for {args.seconds:g} s | {events['pushes']} / "
        f"{events['expected']} ({events['before_202']} before the 202) | {events['p50_ms']} ms | "
        f"{events['p99_ms']} ms | {events['max_ms']} ms |\n"
        f"| the item on most shelves goes out of stock (PUT), {args.changes} times | {out['pushes']} / "
        f"{out['expected']} | {out['p50_ms']} ms | {out['p99_ms']} ms | {out['max_ms']} ms |\n"
        f"| the same item back in stock (every shelf is served again): the shelves it re-enters | {back['pushes']} "
        f"| {back['p50_ms']} ms | {back['p99_ms']} ms | {back['max_ms']} ms |\n\n"
        "Goal (issue 6): p99 <= 100 ms from the event's 202."
    )
    print(body)
    if not args.no_record:
        record(
            "Surface layer: live shelf updates",
            f"python benchmarks/live_updates.py --sockets {args.sockets} --rate {args.rate:g} --seconds "
            f"{args.seconds:g} --changes {args.changes} --ws-workers {args.ws_workers}",
            body,
        )
    if not os.environ.get("DATABASE_URL"):
        from personalization import embedded

        embedded.stop_all(Path(os.environ["PERSONALIZATION_DATA_DIR"]))


if __name__ == "__main__":
    main()
