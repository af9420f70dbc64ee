"""How to serve the REST API: gunicorn (WSGI, sync workers) or uvicorn (ASGI), same Django views, same data.

Starts each server with one worker on the demo data (loaded if the database is empty), then sends, from this
process on one keep-alive connection: GET /api/v1/recommendations for users with history, and single-event
POST /api/v1/events. Results go to BENCHMARKS.md.

    .venv/bin/python benchmarks/serving_modes.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    closed_loop,
    django_setup,
    free_port,
    record,
    start_process,
    wait_for_http,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    django_setup()
    from django.conf import settings
    from django.core.management import call_command

    from graph_app.models import Shopper
    from operations.bootstrap import platform_bootstrap
    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    platform_bootstrap()
    key = api_key_create(name="benchmark").raw_key
    users = list(Shopper.objects.values_list("external_id", flat=True)[:200])
    headers = {"Authorization": f"Bearer {key}"}
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    bin_dir = Path(sys.executable).parent
    run_id = uuid.uuid4().hex[:8]

    def recommendations(index: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        return "GET", f"/api/v1/recommendations?user_id={users[index % len(users)]}&k=10", None, headers

    def single_event(index: int) -> tuple[str, str, bytes | None, dict[str, str]]:
        body = {"event_id": f"bench-{run_id}-{index}", "type": "view", "user_id": users[index % len(users)],
                "item_id": "85123A"}  # fmt: skip
        return "POST", "/api/v1/events", json.dumps(body).encode(), {**headers, "Content-Type": "application/json"}

    servers = {
        "gunicorn (WSGI, sync, 1 worker)": [str(bin_dir / "gunicorn"), "config.wsgi:application", "--workers", "1",
                                            "--log-level", "warning", "--bind"],
        "uvicorn (ASGI, 1 worker)": [str(bin_dir / "uvicorn"), "config.asgi:application", "--log-level", "warning",
                                     "--host", "127.0.0.1", "--port"],
    }  # fmt: skip
    rows = []
    for name, command in servers.items():
        port = free_port()
        address = f"127.0.0.1:{port}" if "gunicorn" in command[0] else str(port)
        process = start_process([*command, address], env)
        try:
            wait_for_http(port)
            closed_loop(port, recommendations, requests=200)  # warm-up
            recs = closed_loop(port, recommendations, requests=args.requests)
            events = closed_loop(port, lambda i: single_event(i + 10**6 * len(rows)), requests=args.requests)
        finally:
            process.terminate()
            process.wait()
        rows.append((name, recs, events))
        print(name, recs, events)

    table = [
        "| server | GET recommendations p50 / p99 (ms) | req/s | POST one event p50 / p99 (ms) | req/s |",
        "|---|---|---|---|---|",
    ]
    for name, recs, events in rows:
        table.append(
            f"| {name} | {recs['p50_ms']} / {recs['p99_ms']} | {recs['rps']} | "
            f"{events['p50_ms']} / {events['p99_ms']} | {events['rps']} |"
        )
    body = (
        f"{args.requests} requests each, one keep-alive connection, client on the same 2 cores; demo catalog "
        "(600 items), users with history, k=10.\n\n" + "\n".join(table) + "\n\n"
        "Decision: the REST API is served by gunicorn sync workers and the WebSockets by uvicorn (ASGI) in a "
        "separate process, as `make run` does."
    )
    record("Serving mode: WSGI vs ASGI for the REST API", "python benchmarks/serving_modes.py", body)


if __name__ == "__main__":
    main()
