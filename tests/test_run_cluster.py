"""`manage.py run_cluster` (`make cluster`) end to end: nginx in front of two web and two WebSocket processes, two
Celery events workers, a trainer and beat, on a Valkey cluster, a standalone broker and PostgreSQL primary plus
replica, all real processes in a data folder of the test's own.

Through nginx's one port: an event is accepted, recommendations answer, a WebSocket gets a live update after an
event, and the events end up as rows in PostgreSQL (moved there by the events workers). A web process SIGKILLed:
every request through nginx still answers until the supervisor has started it again. Ctrl-C (SIGINT) stops every
process and server, and the command exits 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from websockets.sync.client import connect

from operations import cluster
from tests.embedded_test_env import PROJECT_ROOT
from tests.test_run_platform import _free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.cluster,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (make cluster installs it)"),
]
# Generous bounds on a busy machine, never waited for in full: each wait ends on its condition.
BANNER_TIMEOUT_SECONDS = 240
WAIT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 120
BANNER_END = "Ctrl-C stops everything."
# The test environment's settings that would point the cluster's processes elsewhere (manage.py sets the servers'),
# the test run's own cluster (TEST_REDIS_CLUSTER) included.
NOT_INHERITED = (
    *cluster.SERVER_SETTINGS, "TEST_REDIS_CLUSTER", "PROMETHEUS_MULTIPROC_DIR", "WEBSOCKET_PUBLIC_URL",
)  # fmt: skip


class _Runner:
    """The command as a process of its own, its output collected as it comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._output: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._output.append(line)
                self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self._output)

    def wait_for(self, text: str, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: text in "".join(self._output) or self.process.poll() is not None, timeout)
        assert text in self.text(), self.text()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short: PostgreSQL's Unix sockets live in it (about 107 bytes at most), and tmp_path's names are long.
    folder = Path(tempfile.mkdtemp(prefix="cl-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _request(url: str, *, key: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _web_pids(runner_pid: int) -> dict[str, int]:
    pids = {}
    for child in psutil.Process(runner_pid).children():
        try:
            command = child.cmdline()
        except psutil.Error:  # exited, not yet reaped by the supervisor
            continue
        if "gunicorn" in " ".join(command) and "--name" in command:
            pids[command[command.index("--name") + 1]] = child.pid
    return pids


def _stored_events(database_url: str, event_ids: list[str]) -> int:
    with psycopg.connect(database_url, connect_timeout=10) as connection:
        row = connection.execute(
            "SELECT count(*) FROM signals_app_event WHERE event_id = ANY(%s)", [event_ids]
        ).fetchone()
    assert row is not None
    return int(row[0])


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _processes_in(folder: Path) -> list[psutil.Process]:
    """Processes whose command line names the folder: the cluster's Valkey nodes, broker, PostgreSQL servers."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_the_cluster_serves_through_nginx_survives_a_killed_web_process_and_stops_on_ctrl_c(data_dir):
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    env |= {"PERSONALIZATION_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    runner = _Runner(
        [sys.executable, "manage.py", "run_cluster", "--no-demo", "--port", str(port), "--web", "2", "--ws", "2",
         "--events-workers", "2"],
        env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    folder = cluster.cluster_data_dir(data_dir)
    started: list[psutil.Process] = []
    try:
        runner.wait_for(BANNER_END, BANNER_TIMEOUT_SECONDS)
        started = [psutil.Process(runner.process.pid), *psutil.Process(runner.process.pid).children(recursive=True)]
        key = json.loads((folder / "console-credentials.json").read_text())["demo_api_key"]
        stored = cluster.plan_read(folder)
        assert stored is not None
        _plan, servers = stored

        # The banner again, with each Valkey node's role now.
        info = subprocess.run(
            [sys.executable, "manage.py", "cluster_info"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
            timeout=WAIT_SECONDS,
        )  # fmt: skip
        assert "Personalization platform: running" in info.stdout, info.stdout + info.stderr
        assert (info.stdout.count("cluster node, master"), info.stdout.count("cluster node, replica")) == (3, 3)
        assert f"nginx     127.0.0.1:{port}" in info.stdout

        status, body = _request(
            f"{base}/api/v1/items/batch",
            key=key,
            body={"items": [{"item_id": "a", "title": "Red shoe"}, {"item_id": "b", "title": "Blue shoe"}]},
        )
        assert (status, body["created"]) == (200, 2)
        status, body = _request(f"{base}/api/v1/recommendations?user_id=u1&placement=home", key=key)
        assert status == 200 and {item["item_id"] for item in body["items"]} <= {"a", "b"}  # type: ignore[union-attr]

        # A WebSocket through nginx, on one of the two ASGI servers; the event through nginx, on a web process: the
        # live update crosses the cluster's channel layer.
        with connect(f"ws://127.0.0.1:{port}/ws/v1/recommendations/?api_key={key}&user_id=u1&k=2") as socket_:
            assert "items" in json.loads(socket_.recv(timeout=WAIT_SECONDS))
            status, body = _request(
                f"{base}/api/v1/events",
                key=key,
                body={"event_id": "c-1", "type": "view", "user_id": "u1", "item_id": "a"},
            )
            assert (status, body["accepted"]) == (202, 1)
            pushed = json.loads(socket_.recv(timeout=WAIT_SECONDS))
            assert {item["item_id"] for item in pushed["items"]} <= {"a", "b"}

        # A web process SIGKILLed: nginx sends its requests to the other one (a POST too: events are idempotent)
        # until the supervisor has started it again.
        before = _web_pids(runner.process.pid)
        assert set(before) == {"web-1", "web-2"}, before
        psutil.Process(before["web-1"]).kill()
        event_ids = ["c-1"]
        deadline = time.monotonic() + WAIT_SECONDS
        while (after := _web_pids(runner.process.pid)).get("web-1", before["web-1"]) == before["web-1"]:
            assert time.monotonic() < deadline, runner.text()
            event_ids.append(f"c-{len(event_ids) + 1}")
            event = {"event_id": event_ids[-1], "type": "view", "user_id": "u2", "item_id": "b"}
            assert _request(f"{base}/api/v1/events", key=key, body=event)[0] == 202
            assert _request(f"{base}/api/v1/recommendations?user_id=u2&placement=home", key=key)[0] == 200
        assert after["web-2"] == before["web-2"]
        assert len(event_ids) > 1

        # Every accepted event is a row in PostgreSQL, moved there by the events workers.
        _wait_until(lambda: _stored_events(servers["DATABASE_URL"], event_ids) == len(event_ids), runner.text())
    finally:
        runner.process.send_signal(signal.SIGINT)
        try:
            exit_code = runner.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:  # not stopped: leave nothing behind
            for process in [*started, *_processes_in(folder)]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            raise
    output = runner.text()
    assert exit_code == 0, output
    assert "web-1" in output and "exited (rc=-9)" in output, output
    for process in started:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, (process, output)
    assert _processes_in(folder) == [], output
