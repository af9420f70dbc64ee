"""Ingest on a loaded machine: does a 503 ever hide events that were applied?

Batches of 200 events from 4 clients against gunicorn while CPU burners hold the load average at 8 or more (issue
18: at load 8-13 on 2 cores, 65 of 565 batch posts answered 503 after 7,012 of their events had been applied).
Every 503 says per index whether its event was applied, not applied, or unknown (`signals_app.services`); afterwards
each event a 503 called not applied is looked up in Redis (the dedupe's sets): applied-but-503 counts those
found, and must be 0. Events a 503 called unknown are counted apart (a client resends them; event ids make it safe).

    .venv/bin/python benchmarks/ingest_under_load.py [--seconds 60] [--clients 4] [--batch 200] [--burners 12]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import django_setup, free_port, percentile, record, start_process, wait_for_http

LOAD_TARGET = 8.0
LOAD_WAIT_SECONDS = 180
BURNER = "while True: pass"
lock = threading.Lock()


@dataclass
class Tally:
    batches: int = 0
    unavailable: int = 0
    other_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # event ids a 503 said were not applied (all of a batch whose 503 carried no lists), and said were unknown
    claimed_not_applied: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    claimed_applied: int = 0


def client_loop(port: int, key: str, number: int, batch: int, deadline: float, run_id: str, tally: Tally) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = 0
    while time.perf_counter() < deadline:
        events = [
            {
                "event_id": f"load-{run_id}-{number}-{sent + n}",
                "type": "view",
                "user_id": f"load-user-{(sent + n) % 5000}",
                "item_id": f"load-item-{(sent + n) % 800}",
            }
            for n in range(batch)
        ]
        sent += batch
        before = time.perf_counter()
        connection.request(
            "POST",
            "/api/v1/events",
            body=json.dumps({"events": events}),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        payload = json.loads(response.read() or b"{}")
        elapsed_ms = (time.perf_counter() - before) * 1000
        ids = [(event["user_id"], event["event_id"]) for event in events]
        with lock:
            tally.batches += 1
            tally.latencies_ms.append(elapsed_ms)
            if response.status == 503:
                tally.unavailable += 1
                if "applied" in payload:
                    tally.claimed_not_applied += [ids[index] for index in payload["not_applied"]]
                    tally.unknown += [ids[index] for index in payload["unknown"]]
                    tally.claimed_applied += len(payload["applied"])
                else:  # failed before ingest began: none applied
                    tally.claimed_not_applied += ids
            elif response.status != 202:
                tally.other_errors += 1


def applied(ids: list[tuple[str, str]]) -> int:
    """How many of these events Redis saw (the dedupe remembers their event ids)."""
    from graph_app.state.dedupe import event_ids_seen
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    pairs = [(redis_keys.partition_of(user_id), event_id) for user_id, event_id in ids]
    return sum(event_ids_seen(get_control_redis(), pairs, time.time())) if ids else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--burners", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ingest-timeout", type=float, default=None, help="REDIS_INGEST_SOCKET_TIMEOUT_SECONDS")
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    key = api_key_create(name="ingest under load benchmark", scope="server", rate_limit_per_second=100_000).raw_key
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    timeout = settings.REDIS_INGEST_SOCKET_TIMEOUT_SECONDS if args.ingest_timeout is None else args.ingest_timeout
    env["REDIS_INGEST_SOCKET_TIMEOUT_SECONDS"] = str(timeout)
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = start_process(
        [str(bin_dir / "gunicorn"), "config.wsgi:application", "--config", "python:config.gunicorn",
         "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
        env,
    )  # fmt: skip
    burners = [subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.DEVNULL) for _ in range(args.burners)]
    loads: list[float] = []
    tally = Tally()
    try:
        wait_for_http(port)
        waited = time.monotonic() + LOAD_WAIT_SECONDS
        while os.getloadavg()[0] < LOAD_TARGET and time.monotonic() < waited:
            time.sleep(1)
        print("load average before the run", os.getloadavg()[0])
        run_id = uuid.uuid4().hex[:8]
        deadline = time.perf_counter() + args.seconds
        threads = [
            threading.Thread(target=client_loop, args=(port, key, n, args.batch, deadline, run_id, tally))
            for n in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            loads.append(os.getloadavg()[0])
            time.sleep(1)
    finally:
        for burner in burners:
            burner.terminate()
        for burner in burners:
            burner.wait()
        server.terminate()
        server.wait()

    applied_but_503 = applied(tally.claimed_not_applied)
    unknown_applied = applied(tally.unknown)
    share = tally.unavailable / max(tally.batches, 1)
    result = {
        "batches": tally.batches,
        "503": tally.unavailable,
        "share_503": round(share, 4),
        "other_errors": tally.other_errors,
        "applied_but_503": applied_but_503,
        "claimed_applied_in_503s": tally.claimed_applied,
        "unknown": len(tally.unknown),
        "unknown_found_applied": unknown_applied,
        "batch_p50_ms": round(percentile(tally.latencies_ms, 0.5), 1),
        "batch_p99_ms": round(percentile(tally.latencies_ms, 0.99), 1),
        "batch_max_ms": round(max(tally.latencies_ms), 1),
        "load_min": round(min(loads), 1),
        "load_max": round(max(loads), 1),
    }
    print(result)
    body = (
        f"gunicorn with {args.workers} sync workers, {args.clients} clients posting batches of {args.batch} for "
        f"{args.seconds:.0f} s, {args.burners} CPU burners (`{BURNER}`), "
        f"event partitions: {settings.EVENT_PARTITIONS}, embedded Valkey and PostgreSQL, all on the same machine; "
        f"ingest's Redis socket timeout {timeout * 1000:.0f} ms (`REDIS_INGEST_SOCKET_TIMEOUT_SECONDS`).\n\n"
        "| measurement | result |\n|---|---|\n"
        f"| load average (1 min) during the run | {result['load_min']} to {result['load_max']} |\n"
        f"| batches posted | {tally.batches} |\n"
        f"| answered 503 | {tally.unavailable} ({share:.2%}) |\n"
        f"| other non-202 | {tally.other_errors} |\n"
        f"| events a 503 called not applied that were applied (applied-but-503) | {applied_but_503} |\n"
        f"| events a 503 called unknown (of them found applied) | {len(tally.unknown)} ({unknown_applied}) |\n"
        f"| batch latency | p50 {result['batch_p50_ms']} ms, p99 {result['batch_p99_ms']} ms, "
        f"max {result['batch_max_ms']} ms |\n\n"
        "Before (issue 18, the hot path's 50 ms client, every 503 alike): 65 of 565 batch posts answered 503 at load "
        "8-13, and 7,012 of their events had been applied. Goal: applied-but-503 = 0."
    )
    record(
        f"Signal layer: ingest under CPU load, {timeout * 1000:.0f} ms Redis timeout",
        f"python benchmarks/ingest_under_load.py --seconds {args.seconds:.0f} --clients {args.clients} "
        f"--batch {args.batch} --burners {args.burners} --ingest-timeout {timeout}",
        body,
    )


if __name__ == "__main__":
    main()
