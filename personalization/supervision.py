"""Keeps the platform's processes running: a child that exits is restarted after a backoff, the others go on.

The backoff grows (capped exponential) while a program keeps dying and starts over once a run has lasted long
enough. Servers that are not our children (the embedded PostgreSQL and Valkey daemonize) are watched by a probe
and started again the same way. `stop()` (the run command calls it on SIGINT / SIGTERM) sends SIGTERM to every
child, SIGKILL to whatever is left of its process group after a grace period, and returns.

A few dozen lines of our own rather than supervisord: supervisord gives up on a program after `startretries`
(FATAL until a person acts), its backoff only grows linearly, and it cannot watch a server that daemonizes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

TICK_SECONDS = 0.1
STOP_GRACE_SECONDS = 10.0


@dataclass
class Backoff:
    """Delay before the next start: initial * factor ** (failures in a row), at most cap; a stable run resets it."""

    initial_seconds: float = 1.0
    factor: float = 2.0
    cap_seconds: float = 10.0
    stable_after_seconds: float = 10.0
    failures_in_a_row: int = 0

    def delay_after(self, *, run_seconds: float) -> float:
        if run_seconds >= self.stable_after_seconds:
            self.failures_in_a_row = 0
        delay = min(self.cap_seconds, self.initial_seconds * self.factor**self.failures_in_a_row)
        self.failures_in_a_row += 1
        return delay


@dataclass(frozen=True)
class Program:
    """A long-running command the supervisor starts as its child."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None


@dataclass(frozen=True)
class Service:
    """A server that runs outside our process tree: `is_running` probes it, `start` brings it back."""

    name: str
    is_running: Callable[[], bool]
    start: Callable[[], object]
    # Its own backoff instead of the supervisor's (a Valkey cluster master waits for its replica to take over).
    backoff: Callable[[], Backoff] | None = None


@dataclass
class _Unit:
    name: str
    backoff: Backoff
    started_at: float = 0.0
    next_start_at: float | None = None  # set while waiting to restart
    delays: list[float] = field(default_factory=list)

    def schedule_start(self, now: float, *, run_seconds: float) -> float:
        """Wait the backoff (after a run of run_seconds) before the next start; the delay chosen."""
        delay = self.backoff.delay_after(run_seconds=run_seconds)
        self.delays.append(delay)
        self.next_start_at = now + delay
        return delay


@dataclass
class _Child(_Unit):
    program: Program | None = None
    process: subprocess.Popen[str] | None = None


@dataclass
class _Watched(_Unit):
    service: Service | None = None


class Supervisor:
    def __init__(
        self,
        programs: Sequence[Program],
        services: Sequence[Service] = (),
        *,
        backoff: Callable[[], Backoff] = Backoff,
        output: TextIO,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
    ) -> None:
        self._children = [_Child(name=p.name, backoff=backoff(), program=p) for p in programs]
        self._watched = [_Watched(name=s.name, backoff=(s.backoff or backoff)(), service=s) for s in services]
        self._output = output
        self._output_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._stop_grace_seconds = stop_grace_seconds
        self._width = max([len(u.name) for u in [*self._children, *self._watched]] + [6])

    def pids(self) -> dict[str, int]:
        """The pid of each child that is running now."""
        return {c.name: c.process.pid for c in self._children if c.process is not None and c.next_start_at is None}

    def restart_delays(self) -> dict[str, list[float]]:
        """The backoff chosen before each restart, per program or service."""
        return {u.name: list(u.delays) for u in [*self._children, *self._watched]}

    def stop(self) -> None:
        """Ask `run()` to stop everything and return; safe to call from a signal handler or another thread."""
        self._stop_requested.set()

    def run_until_signalled(self) -> None:
        """Run until SIGINT (the terminal's Ctrl-C), SIGTERM or SIGHUP (the terminal closed); call from the main
        thread."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.stop())
        self.run()

    def run(self) -> None:
        try:
            for watched in self._watched:
                watched.started_at = time.monotonic()
            for child in self._children:
                self._start(child)
            while not self._stop_requested.wait(TICK_SECONDS):
                now = time.monotonic()
                # Servers first, so that a program restarted in the same tick finds them up.
                for watched in self._watched:
                    self._check_service(watched, now)
                for child in self._children:
                    self._check_child(child, now)
        finally:
            self._stop_children()

    def announce(self, text: str) -> None:
        """Write a block of lines as they are (the run command's banner), never in the middle of a child's line."""
        self._write(text if text.endswith("\n") else f"{text}\n")

    def log(self, name: str, message: str) -> None:
        self._write(f"{time.strftime('%H:%M:%S')} {name:<{self._width}} | {message}\n")

    def _write(self, text: str) -> None:
        with self._output_lock, contextlib.suppress(OSError):  # a closed terminal must not stop the stopping
            self._output.write(text)
            self._output.flush()

    def _start(self, child: _Child) -> None:
        assert child.program is not None
        child.next_start_at = None
        child.started_at = time.monotonic()
        if child.process is not None:
            # The dead run's leftovers go now, not when it died: until the restart they may finish their work (a
            # gunicorn worker whose master was killed serves the connections queued on its socket, then exits).
            _kill_group(child.process.pid)
        try:
            child.process = _spawn(child.program)
        except OSError as error:  # a missing or unreadable program: retried like one that exits at once
            self._schedule_restart(child, child.started_at, f"did not start ({error})")
            return
        threading.Thread(target=self._relay, args=(child.name, child.process.stdout), daemon=True).start()
        self.log(child.name, f"started (pid {child.process.pid})")

    def _relay(self, name: str, stream: TextIO | None) -> None:
        assert stream is not None
        for line in stream:
            self.log(name, line.rstrip("\n"))

    def _check_child(self, child: _Child, now: float) -> None:
        if child.next_start_at is not None:
            if now >= child.next_start_at:
                self._start(child)
            return
        assert child.process is not None
        returncode = child.process.poll()
        if returncode is None:
            return
        self._schedule_restart(child, now, f"exited (rc={returncode})")

    def _schedule_restart(self, child: _Child, now: float, what: str) -> None:
        delay = child.schedule_start(now, run_seconds=now - child.started_at)
        self.log(child.name, f"{what}; restarting in {delay:g} s")

    def _check_service(self, watched: _Watched, now: float) -> None:
        assert watched.service is not None
        if watched.next_start_at is None:
            if watched.service.is_running():
                return
            delay = watched.schedule_start(now, run_seconds=now - watched.started_at)
            self.log(watched.name, f"is down; starting it in {delay:g} s")
            return
        if now < watched.next_start_at:
            return
        try:
            watched.service.start()
        except Exception as error:  # any failure to start is retried after the backoff
            delay = watched.schedule_start(time.monotonic(), run_seconds=0.0)
            self.log(watched.name, f"did not start ({error}); retrying in {delay:g} s")
            return
        watched.next_start_at = None
        watched.started_at = time.monotonic()
        self.log(watched.name, "started again")

    def _stop_children(self) -> None:
        running = [c for c in self._children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            _signal_process(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_grace_seconds
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(child.name, f"did not stop within {self._stop_grace_seconds:g} s; killing it")
        for child in self._children:
            if child.process is None:
                continue
            _kill_group(child.process.pid)
            returncode = child.process.wait()
            if child in running:
                self.log(child.name, f"stopped (rc={returncode})")


def _spawn(program: Program) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(program.argv),
        env=program.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        # Its own process group: the terminal's Ctrl-C reaches the supervisor only, which stops the children in
        # order, and a dead child's leftovers (pool processes, workers) can be killed as a group.
        start_new_session=True,
    )


def _signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _kill_group(leader_pid: int) -> None:
    # What a dead or stopping program leaves behind (gunicorn workers, Celery pool processes) goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader_pid, signal.SIGKILL)
