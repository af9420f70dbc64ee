"""`make run` end to end, started in a terminal as a newcomer does: gunicorn, the WebSocket server, Celery workers and
beat as real processes.

It prints numbered set-up steps, then the banner once every process answers (and `platform_info` prints it
again); an event posted to the HTTP server reaches a WebSocket held by the other server through the Redis channel
layer; a killed process is restarted while the others go on, and with one of the two web processes killed the
other answers every request; Ctrl-C typed in the terminal stops every process and `make run` exits 0.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import socket
import threading
import time
import urllib.request

import psutil
import pytest
from django.core.management import call_command
from websockets.sync.client import connect

from personalization.services import api_key_create
from tests.embedded_test_env import PROJECT_ROOT
from tests.factories import ItemFactory
from tests.integration_helpers import child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.integration]
START_TIMEOUT_SECONDS = 60
# A first start trains on the test's catalog before it starts the processes: generous, never waited for in full.
BANNER_TIMEOUT_SECONDS = 180
BANNER_HEADING = "Personalization platform: ready"
BANNER_END = "Ctrl-C stops everything."
STARTUP_MARKERS = re.compile(r"^\[\d/\d\] |\| started \(pid | ready\.")


class _Terminal:
    """A command run as a terminal's foreground job: what the terminal shows, and Ctrl-C typed into it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self._master = pty.fork()
        if self.pid == 0:  # the child: nothing but exec
            try:
                os.chdir(PROJECT_ROOT)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self._output = bytearray()
        self._changed = threading.Condition()
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every process that held the terminal has exited
                data = b""
            with self._changed:
                self._output += data
                self.closed = not data
                self._changed.notify_all()
            if not data:
                return

    def text(self) -> str:
        with self._changed:
            return self._output.decode(errors="replace")

    def lines(self) -> list[str]:
        """The lines as they stay on screen: a line redrawn with carriage returns shows its last drawing."""
        return [line.rstrip("\r").split("\r")[-1].replace("\x1b[K", "") for line in self.text().split("\n")]

    def wait_for(self, text: str, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.closed or text.encode() in self._output, timeout)
        assert text in self.text(), self.text()

    def ctrl_c(self) -> None:
        os.write(self._master, b"\x03")  # the line discipline sends SIGINT to the terminal's foreground group

    def exit_code(self, timeout: float) -> int:
        with self._changed:
            assert self._changed.wait_for(lambda: self.closed, timeout), self.text()
        _, status = os.waitpid(self.pid, 0)
        os.close(self._master)
        return os.waitstatus_to_exitcode(status)


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


def _runner_pid(make_pid: int) -> int:
    (runner,) = [p for p in psutil.Process(make_pid).children() if "run_platform" in " ".join(p.cmdline())]
    return runner.pid


def _assert_banner_printed_once_all_answer(terminal: _Terminal, port: int, ws_port: int) -> None:
    """Every URL of the banner answers when it appears (asked once each, no retry), and nothing of the start-up
    comes after it: the numbered steps, each process started, the workers ready."""
    from config.celery import app

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{ws_port}/healthz", timeout=10) as response:
        assert response.status == 200
    assert app.control.ping(destination=[f"worker@{socket.gethostname()}"], timeout=5)
    lines = terminal.lines()
    banner_at = next(i for i, line in enumerate(lines) if line.startswith(BANNER_HEADING))
    steps = [line for line in lines[:banner_at] if re.match(r"\[\d/7\] ", line)]
    assert [step[:5] for step in steps] == ["[1/7]", "[2/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "[7/7]", "[7/7]"]
    assert steps[2] == "[3/7] Loading the demo catalog ... skipped (--no-demo)"
    assert steps[3].startswith("[4/7] Training the item embeddings ... 100% "), steps
    assert steps[-1].startswith("[7/7] Starting web, WebSockets, workers and beat ... 100% "), steps
    for name in ("web-1", "web-2", "ws", "worker", "events", "beat"):
        assert any(f"{name:<6} | started (pid" in line for line in lines[:banner_at]), name
    assert any("worker@" in line and " ready." in line for line in lines[:banner_at])
    assert not [line for line in lines[banner_at:] if STARTUP_MARKERS.search(line)], lines[banner_at:]
    assert "Authorization: Bearer " in "\n".join(lines[banner_at:])


def test_make_run_prints_steps_then_the_banner_serves_and_exits_0_on_ctrl_c(tmp_path, settings):
    ItemFactory(external_id="a", embedding=[1.0] + [0.0] * 63)
    ItemFactory(external_id="b", embedding=[0.9, 0.1] + [0.0] * 62)
    raw_key = api_key_create(name="e2e").raw_key
    port, ws_port = _free_port(), _free_port()
    run_args = f"--no-demo --port {port} --ws-port {ws_port} --web-workers 1"
    # -o: never reinstall the packages from here, whatever the requirements files' times. Not the make of `make
    # test` (its jobserver, its level): the one a newcomer types.
    env = {
        name: value
        for name, value in child_env(PERSONALIZATION_DATA_DIR=str(tmp_path)).items()
        if not name.startswith(("MAKE", "MFLAGS", "GNUMAKEFLAGS"))
    }
    terminal = _Terminal(["make", "-o", ".venv/.installed", "run", f"RUN_ARGS={run_args}"], env)
    try:
        terminal.wait_for(BANNER_END, BANNER_TIMEOUT_SECONDS)
        _assert_banner_printed_once_all_answer(terminal, port, ws_port)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        runner_pid = _runner_pid(terminal.pid)

        # The same banner again, from what the run command kept in its data folder.
        settings.DATA_DIR = tmp_path
        info = io.StringIO()
        call_command("platform_info", stdout=info)
        assert "Personalization platform: running" in info.getvalue()
        banner = terminal.text().replace("\r\n", "\n").split(BANNER_HEADING)[1]
        for line in banner.splitlines()[1:9]:
            assert line in info.getvalue().splitlines(), (line, info.getvalue())

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
        before = _wait_for_programs(runner_pid, deadline)
        psutil.Process(before["events"]).kill()
        restart_deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (after := _programs(runner_pid)).get("events", before["events"]) == before["events"]:
            assert time.monotonic() < restart_deadline, after
            _wait_for(f"http://127.0.0.1:{port}/healthz", restart_deadline)
            time.sleep(0.2)
        assert {name: pid for name, pid in after.items() if name != "events"} == {
            name: pid for name, pid in before.items() if name != "events"
        }

        # One web process killed: the other, on the same port (SO_REUSEPORT), answers every request until the
        # supervisor has started the first again.
        before = _wait_for_programs(runner_pid, restart_deadline)
        psutil.Process(before["web-1"]).kill()
        restart_deadline = time.monotonic() + START_TIMEOUT_SECONDS
        answered = 0
        while (after := _programs(runner_pid)).get("web-1", before["web-1"]) == before["web-1"]:
            assert time.monotonic() < restart_deadline, after
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                assert response.status == 200
            answered += 1
        assert answered > 0
        assert after["web-2"] == before["web-2"]
        _wait_for(f"http://127.0.0.1:{port}/readyz", restart_deadline)
    finally:
        terminal.ctrl_c()
        try:
            exit_code = terminal.exit_code(timeout=30)
        except AssertionError:  # not stopped: leave nothing behind (the runner has its own process group)
            for process in [psutil.Process(terminal.pid), *psutil.Process(terminal.pid).children(recursive=True)]:
                process.kill()
            raise
    output = terminal.text()
    assert exit_code == 0, output
    assert "make: ***" not in output, output  # neither "Interrupt" nor "Error 130"
    # Routine lines at DEBUG (beat sent the drain every second), no warning about running as root.
    assert "Sending due task" not in output and "superuser privileges" not in output, output
    assert "events | exited (rc=-9); restarting in 1 s" in output, output
    assert "web-1  | exited (rc=-9); restarting in 1 s" in output, output
    for name in ("web-1", "web-2", "ws", "worker", "events", "beat"):
        assert f"{name:<6} | stopped" in output, output
    assert _port_closed(port) and _port_closed(ws_port)
