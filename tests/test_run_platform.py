"""The run command end to end: gunicorn, the WebSocket server, a Celery worker and beat as real processes.

An event posted to the HTTP server reaches a WebSocket held by the other server through the Redis channel
layer; a killed process is restarted while the others go on, and with one of the two web processes killed the
other answers every request; Ctrl-C (SIGINT) stops every process and exits 0.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from websockets.sync.client import connect

from personalization.services import api_key_create
from tests.embedded_test_env import PROJECT_ROOT
from tests.factories import ItemFactory
from tests.integration_helpers import child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
START_TIMEOUT_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _port_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _programs(runner_pid: int) -> dict[str, int]:
    """The runner's children by program name (celery's -n names the workers)."""
    names = {
        "--name web-1": "web-1",
        "--name web-2": "web-2",
        "uvicorn": "ws",
        "worker@": "worker",
        "events@": "events",
        " beat": "beat",
    }
    programs = {}
    for child in psutil.Process(runner_pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # exited, not yet reaped by the supervisor
            continue
        programs.update({name: child.pid for marker, name in names.items() if marker in command})
    return programs


def _wait_for_programs(runner_pid: int, deadline: float, expected: int = 6) -> dict[str, int]:
    while len(programs := _programs(runner_pid)) < expected:
        assert time.monotonic() < deadline, programs
        time.sleep(0.2)
    return programs


def test_run_platform_serves_http_and_websockets_and_stops_on_ctrl_c(tmp_path):
    ItemFactory(external_id="a", embedding=[1.0] + [0.0] * 63)
    ItemFactory(external_id="b", embedding=[0.9, 0.1] + [0.0] * 62)
    raw_key = api_key_create(name="e2e").raw_key
    port, ws_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_platform", "--no-demo", "--port", str(port), "--ws-port", str(ws_port),
         "--web-workers", "1"],
        cwd=PROJECT_ROOT, env=child_env(PERSONALIZATION_DATA_DIR=str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        _wait_for(f"http://127.0.0.1:{port}/readyz", deadline)
        _wait_for(f"http://127.0.0.1:{ws_port}/healthz", deadline)

        with connect(f"ws://127.0.0.1:{ws_port}/ws/v1/recommendations/?api_key={raw_key}&user_id=u1&k=1") as socket_:
            # A new user, no popularity yet: the newest item, for exploration.
            assert json.loads(socket_.recv(timeout=10))["items"][0]["source"] == "fresh"
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/events",
                data=json.dumps({"event_id": "e2e-1", "type": "view", "user_id": "u1", "item_id": "a"}).encode(),
                headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 202
            pushed = json.loads(socket_.recv(timeout=10))
            assert [item["item_id"] for item in pushed["items"]] == ["b"]

        # The events worker killed: it alone is restarted, and the web server answers all along.
        before = _wait_for_programs(process.pid, deadline)
        psutil.Process(before["events"]).kill()
        restart_deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (after := _programs(process.pid)).get("events", before["events"]) == before["events"]:
            assert time.monotonic() < restart_deadline, after
            _wait_for(f"http://127.0.0.1:{port}/healthz", restart_deadline)
            time.sleep(0.2)
        assert {name: pid for name, pid in after.items() if name != "events"} == {
            name: pid for name, pid in before.items() if name != "events"
        }

        # One web process killed: the other, on the same port (SO_REUSEPORT), answers every request until the
        # supervisor has started the first again.
        before = _wait_for_programs(process.pid, restart_deadline)
        psutil.Process(before["web-1"]).kill()
        restart_deadline = time.monotonic() + START_TIMEOUT_SECONDS
        answered = 0
        while (after := _programs(process.pid)).get("web-1", before["web-1"]) == before["web-1"]:
            assert time.monotonic() < restart_deadline, after
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                assert response.status == 200
            answered += 1
        assert answered > 0
        assert after["web-2"] == before["web-2"]
        _wait_for(f"http://127.0.0.1:{port}/readyz", restart_deadline)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output
    assert "Admin" in output and "password" in output, output
    assert "events | exited (rc=-9); restarting in 1 s" in output, output
    assert "web-1  | exited (rc=-9); restarting in 1 s" in output, output
    for name in ("web-1", "web-2", "ws", "worker", "events", "beat"):
        assert f"{name:<6} | stopped" in output, output
    assert _port_closed(port) and _port_closed(ws_port)
