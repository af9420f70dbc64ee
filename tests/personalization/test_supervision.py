"""The supervisor with stand-in programs: restarts with backoff, leaves the others alone, stops everything."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import pytest
import redis

from personalization import embedded
from personalization.supervision import Backoff, Program, Service, Supervisor
from tests.embedded_test_env import PROJECT_ROOT

TIMEOUT_SECONDS = 30
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _fast_backoff() -> Backoff:
    return Backoff(initial_seconds=0.01, factor=2, cap_seconds=0.08, stable_after_seconds=60)


def _wait_until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@contextmanager
def _running(supervisor: Supervisor) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=supervisor.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        supervisor.stop()
        thread.join(TIMEOUT_SECONDS)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_backoff_doubles_up_to_the_cap_and_starts_over_after_a_stable_run():
    backoff = Backoff(initial_seconds=1, factor=2, cap_seconds=5, stable_after_seconds=10)

    delays = [backoff.delay_after(run_seconds=0.5) for _ in range(5)]
    after_stable_run = backoff.delay_after(run_seconds=10)

    assert delays == [1, 2, 4, 5, 5]
    assert after_stable_run == 1


def test_a_killed_program_is_restarted_and_the_others_keep_their_pids():
    supervisor = Supervisor(
        [Program(name, SLEEPER) for name in ("web", "events", "beat")], backoff=_fast_backoff, output=io.StringIO()
    )
    with _running(supervisor):
        _wait_until(lambda: len(supervisor.pids()) == 3, "three programs")
        before = supervisor.pids()

        psutil.Process(before["events"]).send_signal(signal.SIGKILL)
        _wait_until(lambda: supervisor.pids().get("events", before["events"]) != before["events"], "a new events")

        after = supervisor.pids()
        assert after["web"] == before["web"] and after["beat"] == before["beat"]
        assert _alive(after["events"]) and not _alive(before["events"])
        assert supervisor.restart_delays() == {"web": [], "events": [0.01], "beat": []}


def test_the_backoff_grows_while_a_program_keeps_dying():
    output = io.StringIO()
    supervisor = Supervisor([Program("crash", [sys.executable, "-c", "raise SystemExit(3)"])],
                            backoff=_fast_backoff, output=output)  # fmt: skip
    with _running(supervisor):
        _wait_until(lambda: len(supervisor.restart_delays()["crash"]) >= 5, "five restarts")

    assert supervisor.restart_delays()["crash"][:5] == [0.01, 0.02, 0.04, 0.08, 0.08]
    assert "crash  | exited (rc=3); restarting in 0.08 s" in output.getvalue()


def test_a_dead_programs_leftover_processes_are_killed_with_it():
    parent_and_child = [sys.executable, "-c", "import subprocess, sys, time;"
                        f" subprocess.Popen({SLEEPER!r}); time.sleep(600)"]  # fmt: skip
    supervisor = Supervisor([Program("worker", parent_and_child)], backoff=_fast_backoff, output=io.StringIO())
    with _running(supervisor):
        _wait_until(lambda: "worker" in supervisor.pids(), "the worker")
        main = psutil.Process(supervisor.pids()["worker"])
        _wait_until(main.children, "the pool process")
        pool_process = main.children()[0]

        main.send_signal(signal.SIGKILL)
        _wait_until(lambda: supervisor.pids().get("worker", main.pid) != main.pid, "a new worker")

        assert not _alive(pool_process.pid)


def test_stop_ends_every_program_even_one_that_ignores_sigterm():
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                " print('ready', flush=True); time.sleep(600)"]  # fmt: skip
    output = io.StringIO()
    supervisor = Supervisor([Program("web", SLEEPER), Program("stubborn", stubborn)], backoff=_fast_backoff,
                            output=output, stop_grace_seconds=0.5)  # fmt: skip
    with _running(supervisor) as thread:
        _wait_until(lambda: "stubborn | ready" in output.getvalue(), "the stubborn program")
        pids = supervisor.pids()
        supervisor.stop()
        thread.join(TIMEOUT_SECONDS)

    assert not thread.is_alive()
    assert not any(_alive(pid) for pid in pids.values())
    assert "web      | stopped (rc=-15)" in output.getvalue()
    assert "stubborn | stopped (rc=-9)" in output.getvalue()


def test_ctrl_c_stops_every_program_and_exits_0():
    script = textwrap.dedent(f"""
        import sys
        from personalization.supervision import Program, Supervisor
        sleeper = {SLEEPER!r}
        Supervisor([Program("a", sleeper), Program("b", sleeper)], output=sys.stdout).run_until_signalled()
    """)
    runner = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        started = [runner.stdout.readline(), runner.stdout.readline()]
        pids = [int(line.rsplit("pid ", 1)[1].rstrip(")\n")) for line in started]

        runner.send_signal(signal.SIGINT)
        output, _ = runner.communicate(timeout=TIMEOUT_SECONDS)
    finally:
        runner.kill()

    assert runner.returncode == 0
    assert "a      | stopped (rc=-15)" in output and "b      | stopped (rc=-15)" in output
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.integration
def test_a_killed_embedded_valkey_is_started_again_on_its_port(tmp_path):
    url = embedded.ensure_valkey(tmp_path)
    valkey = Service("valkey", lambda: embedded.valkey_running(tmp_path), lambda: embedded.ensure_valkey(tmp_path))
    supervisor = Supervisor([], [valkey], backoff=_fast_backoff, output=io.StringIO())
    try:
        with _running(supervisor):
            killed = psutil.Process(int((tmp_path / "valkey" / "valkey.pid").read_text()))
            killed.send_signal(signal.SIGKILL)
            killed.wait(TIMEOUT_SECONDS)

            _wait_until(lambda: embedded.valkey_running(tmp_path), "Valkey started again")
            assert redis.Redis.from_url(url).ping()
            assert supervisor.restart_delays()["valkey"] == [0.01]
    finally:
        embedded.stop_valkey(tmp_path)


def test_a_service_that_fails_to_start_is_retried_with_a_growing_backoff():
    attempts: list[float] = []

    def fail_twice() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("port taken")

    flaky = Service("flaky", lambda: len(attempts) >= 3, fail_twice)
    supervisor = Supervisor([], [flaky], backoff=_fast_backoff, output=io.StringIO())
    with _running(supervisor):
        _wait_until(lambda: len(attempts) >= 3, "a third attempt")

    assert supervisor.restart_delays()["flaky"] == [0.01, 0.02, 0.04]


def test_a_service_with_a_backoff_of_its_own_waits_that_long_the_others_the_supervisors():
    attempts: dict[str, int] = {"slow": 0, "fast": 0}

    def start(name: str) -> None:
        attempts[name] += 1
        if attempts[name] < 2:
            raise RuntimeError("not yet")

    slow_backoff = lambda: Backoff(initial_seconds=0.05, factor=2, cap_seconds=1)  # noqa: E731
    slow = Service("slow", lambda: attempts["slow"] >= 2, lambda: start("slow"), slow_backoff)
    fast = Service("fast", lambda: attempts["fast"] >= 2, lambda: start("fast"))
    supervisor = Supervisor([], [slow, fast], backoff=_fast_backoff, output=io.StringIO())
    with _running(supervisor):
        _wait_until(lambda: min(attempts.values()) >= 2, "a second attempt of each")

    assert supervisor.restart_delays() == {"slow": [0.05, 0.1], "fast": [0.01, 0.02]}


def test_a_program_that_cannot_be_started_is_retried_and_the_others_run():
    output = io.StringIO()
    supervisor = Supervisor([Program("missing", ["/nonexistent/program"]), Program("web", SLEEPER)],
                            backoff=_fast_backoff, output=output)  # fmt: skip
    with _running(supervisor):
        _wait_until(lambda: len(supervisor.restart_delays()["missing"]) >= 3, "three attempts")

        assert _alive(supervisor.pids()["web"])
        assert "missing" not in supervisor.pids()
    assert supervisor.restart_delays()["missing"][:3] == [0.01, 0.02, 0.04]
    assert "missing | did not start ([Errno 2] No such file or directory" in output.getvalue()
