"""Shared pieces of the benchmarks: Django set-up against the embedded (or configured) servers, process
management, a closed-loop HTTP load generator and writing results to BENCHMARKS.md."""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_process(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# The run commands' banner, printed once every process answers (operations/launcher.py).
READY_BANNER = "Personalization platform: ready"
# Servers a run command would take from the environment instead of starting its own.
SERVER_VARIABLES = ("DATABASE_URL", "REDIS_URL", "REDIS_CLUSTER_NODES", "DATABASE_REPLICA_URLS", "EVENT_PARTITIONS")


def run_command_start(
    arguments: list[str], *, data_dir: Path, log: Path, timeout: float, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`manage.py run_platform|run_cluster ...` with its own embedded servers in `data_dir`, its output in `log`,
    once its banner is printed; and the environment it was given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {name: value for name, value in os.environ.items() if name not in SERVER_VARIABLES}
    env |= {"PERSONALIZATION_DATA_DIR": str(data_dir), **(extra_env or {})}
    with open(log, "w") as output:  # the child keeps its own descriptor
        runner = subprocess.Popen(
            [sys.executable, "manage.py", *arguments], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while READY_BANNER not in log.read_text(errors="replace"):
        if runner.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"manage.py {arguments[0]} did not start; see {log}")
        time.sleep(1)
    return runner, env


def manage_py_shell(script: str, env: dict[str, str]) -> str:
    """The last line `manage.py shell -c script` printed, run in `env` (a platform's servers)."""
    output = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    return output.strip().splitlines()[-1]


def wait_for_http(port: int, path: str = "/healthz", timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def closed_loop(
    port: int, make_request: Callable[[int], tuple[str, str, bytes | None, dict[str, str]]], *, requests: int
) -> dict[str, float]:
    """One keep-alive connection, one request at a time; latency in milliseconds as the client sees it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    for index in range(requests):
        method, path, body, headers = make_request(index)
        before = time.perf_counter()
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - before) * 1000)
        errors += response.status >= 400
    elapsed = time.perf_counter() - started
    return {
        "requests": requests,
        "errors": errors,
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "rps": round(requests / elapsed),
    }


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}; {python_speed()}"
    )


def python_speed() -> str:
    """How fast this machine runs plain Python now: machines of this kind have differed by three times from one
    session to the next (and one drifts by 15% within minutes), so figures of different days compare only
    through a reading like this one."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(2_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return f"speed: a 2 M-iteration Python loop in {best * 1000:.0f} ms (best of 3)"


def record(section: str, command: str, body: str) -> None:
    """Replace (or add) one section of BENCHMARKS.md, keeping the others."""
    header = "# Benchmarks\n\nFigures measured on this project's machines; each section says how and when.\n"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else header
    block = (
        f"## {section}\n\n"
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"- Machine: {machine_description()}\n"
        f"- Command: `{command}`\n\n"
        f"{body.strip()}\n"
    )
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(block + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    BENCHMARKS_MD.write_text(text.rstrip() + "\n")


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def precomputed_lists_ensure() -> list[str]:
    """Data prepared before the items' similar lists or the users' nearest lists existed gets them from the stored
    embeddings (what each training now publishes); returns which were built."""
    from graph_app.similar_lists import similar_lists_refresh
    from graph_app.user_lists import user_lists_refresh
    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    client = get_control_redis()
    built = []
    if not client.exists(redis_keys.ITEM_SIMILAR_LISTS):
        similar_lists_refresh()
        built.append("similar_lists")
    if not any(client.exists(redis_keys.user_nearest_lists(partition)) for partition in redis_keys.partitions()):
        user_lists_refresh()
        built.append("user_lists")
    return built
