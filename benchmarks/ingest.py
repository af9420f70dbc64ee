"""Signal-layer ingest benchmark: single events at a fixed rate, batch throughput, the consumer's rate into the
PostgreSQL log, and how fast an outage of Redis turns into a 503.

The server (gunicorn, sync workers, as `make run` serves the API) runs in its own processes; this script is the
load generator. Single-event latency is measured open-loop: requests are scheduled at a fixed rate and each
latency counts from its scheduled time, so a stalled server cannot hide its queueing (no coordinated omission).

    .venv/bin/python benchmarks/ingest.py [--rate 500] [--seconds 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import django_setup, free_port, percentile, record, start_process, wait_for_http

SENDER_THREADS = 16


def single_events_at_fixed_rate(port: int, key: str, rate: int, seconds: float, run_id: str) -> dict[str, float]:
    total = int(rate * seconds)
    start = time.perf_counter() + 0.5
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def sender(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        local: list[float] = []
        for index in range(offset, total, SENDER_THREADS):
            scheduled = start + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps(
                {"event_id": f"bench-{run_id}-{index}", "type": "view", "user_id": f"bench-user-{index % 5000}",
                 "item_id": f"bench-item-{index % 800}"}
            )  # fmt: skip
            connection.request(
                "POST",
                "/api/v1/events",
                body=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            response.read()
            local.append((time.perf_counter() - scheduled) * 1000)
            if response.status != 202:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(SENDER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return {
        "requests": total,
        "errors": errors[0],
        "achieved_rps": round(total / elapsed),
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "p999_ms": round(percentile(latencies, 0.999), 2),
    }


def batch_throughput(port: int, key: str, seconds: float, run_id: str, clients: int = 4) -> dict[str, float]:
    deadline = time.perf_counter() + seconds
    accepted = [0] * clients
    batch_latencies: list[float] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = 0
        local: list[float] = []
        while time.perf_counter() < deadline:
            events = [
                {"event_id": f"batch-{run_id}-{number}-{sent + n}", "type": "view",
                 "user_id": f"bench-user-{(sent + n) % 5000}", "item_id": f"bench-item-{(sent + n) % 800}"}
                for n in range(500)
            ]  # fmt: skip
            before = time.perf_counter()
            connection.request(
                "POST", "/api/v1/events", body=json.dumps({"events": events}),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            payload = json.loads(response.read())
            local.append((time.perf_counter() - before) * 1000)
            accepted[number] += payload["accepted"]
            sent += 500
        with lock:
            batch_latencies.extend(local)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "events": sum(accepted),
        "events_per_second": round(sum(accepted) / elapsed),
        "batch_p50_ms": round(percentile(batch_latencies, 0.5), 1),
        "batch_p99_ms": round(percentile(batch_latencies, 0.99), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from personalization.services import api_key_create
    from signals_app.consumer import events_drain_all

    call_command("migrate", verbosity=0)
    key = api_key_create(name="ingest benchmark").raw_key
    while events_drain_all().read:  # start from empty streams
        pass
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    port = free_port()
    bin_dir = Path(sys.executable).parent
    server = start_process(
        [str(bin_dir / "gunicorn"), "config.wsgi:application", "--workers", str(args.workers), "--bind",
         f"127.0.0.1:{port}", "--log-level", "warning"],
        env,
    )  # fmt: skip
    run_id = uuid.uuid4().hex[:8]
    try:
        wait_for_http(port)
        single_events_at_fixed_rate(port, key, 100, 2, run_id + "w")  # warm-up
        single = single_events_at_fixed_rate(port, key, args.rate, args.seconds, run_id)
        print("single", single)
        batches = batch_throughput(port, key, args.seconds / 2, run_id)
        print("batches", batches)
    finally:
        server.terminate()
        server.wait()

    started = time.perf_counter()
    drained = 0
    while True:
        report = events_drain_all()
        drained += report.stored
        if not report.read:
            break
    drain_rate = round(drained / (time.perf_counter() - started))
    print("drain", drained, drain_rate)

    body = (
        f"gunicorn with {args.workers} sync workers, load generator in a separate process on the same 2 cores, "
        f"{settings.EVENT_PARTITIONS} partitions, embedded Valkey (append-only, fsync every second) and PostgreSQL.\n\n"
        "| measurement | result |\n|---|---|\n"
        f"| single event, open loop at {args.rate} req/s for {args.seconds:.0f} s | p50 {single['p50_ms']} ms, "
        f"p99 {single['p99_ms']} ms, p99.9 {single['p999_ms']} ms ({single['achieved_rps']} req/s achieved, "
        f"{single['errors']} errors) |\n"
        f"| batches of 500, 4 clients | {batches['events_per_second']} events/s "
        f"(batch p50 {batches['batch_p50_ms']} ms, p99 {batches['batch_p99_ms']} ms) |\n"
        f"| consumer into the PostgreSQL log (one process) | {drain_rate} events/s ({drained} events) |\n\n"
        "Goals (issue 3): single event p99 <= 5 ms, batches >= 10,000 events/s."
    )
    record(
        "Signal layer: event ingest",
        f"python benchmarks/ingest.py --rate {args.rate} --seconds {args.seconds:.0f}",
        body,
    )


if __name__ == "__main__":
    main()
