"""Scale-out throughput: `make run` (single node) beside `make cluster` (nginx, several web processes, a Valkey cluster,
PostgreSQL primary and replica) on the same machine, and what each part costs a recommendation.

Both platforms run at once from their own data folders (.data/bench-scale-out/single and .../cluster, demo data,
trained by their first start and kept). A separate load process drives one of them at a time, closed loop, through
its public port (gunicorn for the single node, nginx for the cluster): each of --connections keep-alive connections
asks GET /api/v1/recommendations (home shelf, 10 items) for the demo's shoppers in turn and, every other request,
posts a batch of --batch events for that shopper (POST /api/v1/events), as a storefront does. The modes alternate,
--rounds times each, so that a machine whose speed drifts favours neither.

Per window: recommendations and events a second, latency percentiles, non-2xx answers, and the CPU time each part
of the platform spent (from /proc, its processes and their children), divided by the recommendations served: web
(gunicorn), nginx, WebSockets (uvicorn), Celery (events consumers, trainer, beat), Valkey and PostgreSQL. From the
cluster's costs, a capacity model: the cores of each part that serve 1,000 and 10,000 recommendations a second.

    .venv/bin/python benchmarks/scale_out.py [--seconds 30] [--connections 8] [--rounds 2] [--keep-running]
        [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ROOT, free_port, manage_py_shell, percentile, record, run_command_start
from benchmarks.recommendations_e2e import cpu_seconds

DATA_ROOT = ROOT / ".data" / "bench-scale-out"
START_TIMEOUT_SECONDS = 900.0  # a first start trains the demo's models
PARTS = ("web", "nginx", "ws", "celery", "valkey", "postgres")
# The share of a core a part may use before it needs another: headroom for bursts and for a node lost.
TARGET_UTILIZATION = 0.6
CAPACITY_RATES = (1_000, 10_000)
USERS = 400


# --- load generator (its own process: no Django here) ---------------------------------------------------------


def _closed_loop(spec: dict[str, object]) -> dict[str, object]:
    port, key, seconds = int(spec["port"]), str(spec["key"]), float(spec["seconds"])  # type: ignore[arg-type]
    users, items = list(spec["users"]), list(spec["items"])  # type: ignore[call-overload]
    batch, connections, run = int(spec["batch"]), int(spec["connections"]), str(spec["run"])  # type: ignore[call-overload]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    lock = threading.Lock()
    rows: list[tuple[str, int, float]] = []  # kind, status, latency ms
    events_sent = [0]
    stop_at = time.perf_counter() + seconds

    def send(connection: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> tuple[int, float]:
        before = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            status = 0
        return status, (time.perf_counter() - before) * 1000

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local: list[tuple[str, int, float]] = []
        sent, step = 0, number
        while time.perf_counter() < stop_at:
            user = users[step % len(users)]
            status, ms = send(connection, "GET", f"/api/v1/recommendations?user_id={user}&placement=home&k=10", None)
            local.append(("recommendations", status, ms))
            if step % 2 == 0:
                events = [
                    {"event_id": f"so-{run}-{number}-{step}-{n}", "type": "click" if n == 0 else "view",
                     "user_id": user, "item_id": items[(step * batch + n) % len(items)]}
                    for n in range(batch)
                ]  # fmt: skip
                status, ms = send(connection, "POST", "/api/v1/events", json.dumps({"events": events}).encode())
                local.append(("events", status, ms))
                sent += batch if status == 202 else 0
            step += connections
        with lock:
            rows.extend(local)
            events_sent[0] += sent

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    recommendations = [row for row in rows if row[0] == "recommendations"]
    latencies = [row[2] for row in recommendations if row[1] == 200] or [float("nan")]
    event_latencies = [row[2] for row in rows if row[0] == "events" and row[1] == 202] or [float("nan")]
    return {
        "seconds": round(elapsed, 2),
        "recommendations": len(recommendations),
        "recommendations_200": sum(1 for row in recommendations if row[1] == 200),
        "events_acknowledged": events_sent[0],
        "statuses": dict(Counter(f"{row[0]} {row[1]}" for row in rows)),
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "events_p99_ms": round(percentile(event_latencies, 0.99), 1),
    }


def load_worker() -> None:
    spec = json.loads(sys.stdin.read())
    result = _closed_loop(spec)
    times = os.times()
    result["client_cpu_seconds"] = round(times.user + times.system, 2)
    print(json.dumps(result))


# --- the two platforms ---------------------------------------------------------------------------------------------


@dataclass
class Platform:
    mode: str  # "single" or "cluster"
    data_dir: Path
    port: int
    partitions: int | None = None  # EVENT_PARTITIONS (the cluster's default when None)
    runner: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    key: str = ""
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)

    @property
    def servers_dir(self) -> Path:
        """Where its servers' folders are: the cluster keeps its own under `cluster/`."""
        return self.data_dir / "cluster" if self.mode == "cluster" else self.data_dir

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = (
            ["run_platform", "--port", str(self.port), "--ws-port", str(free_port())]
            if self.mode == "single"
            else ["run_cluster", "--port", str(self.port)]
        )
        self.runner, env = run_command_start(
            command,
            data_dir=self.data_dir,
            log=self.data_dir / f"{self.mode}.log",
            timeout=START_TIMEOUT_SECONDS,
            extra_env={"EVENT_PARTITIONS": str(self.partitions)} if self.partitions else None,
        )
        self.env = self._settings_env(env)

    def _settings_env(self, env: dict[str, str]) -> dict[str, str]:
        """The environment in which a manage.py command reaches this platform's servers."""
        if self.mode == "single":
            return env
        stored = json.loads((self.servers_dir / "cluster-plan.json").read_text())
        return {**env, "PERSONALIZATION_DATA_DIR": str(self.servers_dir), **stored["servers"]}

    def prepare(self) -> None:
        """A key without a practical rate limit, the demo's shoppers and items."""
        script = (
            "import json\n"
            "from personalization.services import api_key_create\n"
            "from graph_app.interface import shopper_ids_first\n"
            "from graph_app.models import Item\n"
            "key = api_key_create(name='scale-out benchmark', scope='server', rate_limit_per_second=1_000_000)\n"
            f"users = list(shopper_ids_first(limit={USERS}))\n"
            "items = list(Item.objects.order_by('id').values_list('external_id', flat=True)[:500])\n"
            "print(json.dumps({'key': key.raw_key, 'users': users, 'items': items}))\n"
        )
        prepared = json.loads(manage_py_shell(script, self.env))
        self.key, self.users, self.items = prepared["key"], prepared["users"], prepared["items"]

    def part_pids(self) -> dict[str, list[int]]:
        """The root process of each part: the supervisor's children by their command line, the servers by their
        pid files (their children, PostgreSQL's backends, count with them)."""
        import psutil

        parts: dict[str, list[int]] = {part: [] for part in PARTS}
        assert self.runner is not None
        for child in psutil.Process(self.runner.pid).children():
            with contextlib.suppress(psutil.Error):
                command = " ".join(child.cmdline())
                part = (
                    "web" if "gunicorn" in command
                    else "ws" if "uvicorn" in command
                    else "nginx" if "nginx" in command
                    else "celery" if "celery" in command
                    else None
                )  # fmt: skip
                if part:
                    parts[part].append(child.pid)
        for pid_file in [*self.servers_dir.rglob("*.pid"), *self.servers_dir.rglob("postmaster.pid")]:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                pid = int(pid_file.read_text().split()[0])
                name = psutil.Process(pid).name()
                part = "valkey" if "valkey" in name else "postgres" if "postgres" in name else None
                if part and pid not in parts[part]:
                    parts[part].append(pid)
        return parts

    def cpu(self) -> dict[str, float]:
        return {part: sum(cpu_seconds(pid) or 0.0 for pid in pids) for part, pids in self.part_pids().items()}

    def stop(self) -> None:
        if self.runner is not None and self.runner.poll() is None:
            self.runner.send_signal(signal.SIGINT)
            try:
                self.runner.wait(120)
            except subprocess.TimeoutExpired:
                self.runner.kill()


def measure(platform: Platform, args: argparse.Namespace) -> dict[str, object]:
    spec = {
        "port": platform.port, "key": platform.key, "seconds": args.seconds, "users": platform.users,
        "items": platform.items, "batch": args.batch, "connections": args.connections, "run": uuid.uuid4().hex[:8],
    }  # fmt: skip
    before = platform.cpu()
    output = subprocess.run(
        [sys.executable, __file__, "--load-worker"], input=json.dumps(spec), check=True, capture_output=True, text=True
    ).stdout
    after = platform.cpu()
    result: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    served = max(1, int(result["recommendations_200"]))  # type: ignore[call-overload]
    result["mode"] = platform.mode
    result["rec_per_s"] = round(served / float(result["seconds"]), 1)  # type: ignore[arg-type]
    result["events_per_s"] = round(int(result["events_acknowledged"]) / float(result["seconds"]), 1)  # type: ignore[call-overload, arg-type]
    result["cpu_ms_per_rec"] = {part: round(1000 * (after[part] - before[part]) / served, 2) for part in PARTS}
    return result


def capacity(cpu_ms: dict[str, float]) -> dict[str, dict[int, float]]:
    """Cores of each part at each rate: the measured CPU a recommendation (with its share of events) costs,
    over the target utilization."""
    return {
        part: {rate: round(rate * cpu_ms[part] / 1000 / TARGET_UTILIZATION, 1) for rate in CAPACITY_RATES}
        for part in PARTS
    }


def mean_costs(results: list[dict[str, object]], mode: str) -> dict[str, float]:
    runs = [r["cpu_ms_per_rec"] for r in results if r["mode"] == mode]
    return {part: round(sum(run[part] for run in runs) / len(runs), 2) for part in PARTS}  # type: ignore[index]


def report(results: list[dict[str, object]], args: argparse.Namespace) -> str:
    lines = [
        "| round | mode | rec/s | events/s | p50 ms | p99 ms | events p99 ms | non-2xx | "
        + " | ".join(f"{part} CPU ms/rec" for part in PARTS)
        + " | total |",
        "|---" * (9 + len(PARTS)) + "|",
    ]
    for number, result in enumerate(results):
        cpu: dict[str, float] = result["cpu_ms_per_rec"]  # type: ignore[assignment]
        statuses: dict[str, int] = result["statuses"]  # type: ignore[assignment]
        failed = sum(count for status, count in statuses.items() if not status.split()[1].startswith("2"))
        lines.append(
            f"| {number // 2 + 1} | {result['mode']} | {result['rec_per_s']} | {result['events_per_s']} | "
            f"{result['p50_ms']} | {result['p99_ms']} | {result['events_p99_ms']} | {failed} | "
            + " | ".join(f"{cpu[part]}" for part in PARTS)
            + f" | {round(sum(cpu.values()), 2)} |"
        )
    rates = " | ".join(f"cores at {rate:,}/s" for rate in CAPACITY_RATES)
    model_lines = [
        f"| part | CPU ms a recommendation (cluster, mean) | {rates} |",
        "|---|---|" + "---|" * len(CAPACITY_RATES),
    ]
    costs = mean_costs(results, "cluster")
    cores = capacity(costs)
    for part in PARTS:
        model_lines.append(
            f"| {part} | {costs[part]} | " + " | ".join(f"{cores[part][rate]}" for rate in CAPACITY_RATES) + " |"
        )
    total = {rate: round(sum(cores[part][rate] for part in PARTS), 1) for rate in CAPACITY_RATES}
    totals = " | ".join(f"{total[rate]}" for rate in CAPACITY_RATES)
    model_lines.append(f"| all | {round(sum(costs.values()), 2)} | {totals} |")
    valkey_masters = {rate: max(3, math.ceil(cores["valkey"][rate])) for rate in CAPACITY_RATES}
    return "\n".join(
        [
            f"Closed loop, {args.connections} connections, {args.seconds:.0f} s a window, modes alternating "
            f"({args.rounds} rounds); every other recommendation request is followed by a batch of {args.batch} "
            "events for its shopper. CPU is each part's processes and children from /proc over the window, divided "
            "by the recommendations answered 200 (events included in that cost).",
            "",
            *lines,
            "",
            f"Capacity model (cluster costs; a part's cores at {TARGET_UTILIZATION:.0%} utilization):",
            "",
            *model_lines,
            "",
            "Linear in the rate, at the partition count measured. Valkey runs a command at a time on one core per "
            "master, and every partition adds a read to each recommendation: "
            + ", ".join(f"{rate:,}/s would want {valkey_masters[rate]} masters" for rate in CAPACITY_RATES)
            + ' by this table alone; what more partitions cost instead: "Issue 23: capacity model".',
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4, help="events a batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--cluster-partitions", type=int, help="EVENT_PARTITIONS of the cluster (its own data folder); default 12"
    )
    parser.add_argument("--keep-running", action="store_true", help="leave both platforms running afterwards")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--only", choices=("single", "cluster"), help="start and measure this mode alone")
    parser.add_argument("--load-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        load_worker()
        return
    platforms = [
        Platform("single", DATA_ROOT / "single", free_port()),
        Platform(
            "cluster",
            DATA_ROOT / (f"cluster-{args.cluster_partitions}p" if args.cluster_partitions else "cluster"),
            free_port(),
            args.cluster_partitions,
        ),
    ]
    platforms = [platform for platform in platforms if args.only in (None, platform.mode)]
    results: list[dict[str, object]] = []
    try:
        for platform in platforms:
            print(f"starting {platform.mode} on port {platform.port} (log in {platform.data_dir})", flush=True)
            platform.start()
            platform.prepare()
        for number in range(args.rounds):
            for platform in platforms if number % 2 == 0 else reversed(platforms):
                result = measure(platform, args)
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        if not args.keep_running:
            for platform in platforms:
                platform.stop()
    body = report(results, args)
    print(body)
    if not args.no_record:
        record(
            "Issue 23: throughput, single node and cluster mode",
            f"python benchmarks/scale_out.py --seconds {args.seconds:.0f} --connections {args.connections} "
            f"--rounds {args.rounds}",
            body,
        )


if __name__ == "__main__":
    main()
