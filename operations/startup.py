"""What `make run` shows while it starts: numbered set-up steps with their progress and time, a wait until every
process answers, then the banner (URLs, console login, demo API key), which `manage.py platform_info` prints again.
Also Ctrl-C for the run command alone, so that `make run` exits 0 on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from operations.bootstrap import ADMIN_USERNAME, StepOutcome

logger = logging.getLogger(__name__)

BAR_WIDTH = 20
REDRAW_EVERY_SECONDS = 0.1
READY_POLL_SECONDS = 0.25
HANGUP_POLL_SECONDS = 0.5
# Past this, the wait says every so often what has not answered yet (a port taken, a crash loop...).
STILL_WAITING_EVERY_SECONDS = 30.0
ADDRESSES_FILE = "run-addresses.json"
SETUP_LOG_FILE = "setup.log"


class StepReporter:
    """Prints each set-up step as `[n/N] title ... 100% 12.3 s`. On a terminal, a progress bar is redrawn in place
    while the step's Progress (graph_app.progress) advances: the outermost one under way (a search's settings tried,
    not each fit within it). Elsewhere (a file, a pipe) a step is one line, begun when it starts and completed when
    it ends, so that logs get no carriage returns."""

    def __init__(self, total: int, *, stream: TextIO, tty: bool | None = None) -> None:
        self.total = total
        self.number = 0
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._lock = threading.RLock()  # Progress may advance in several threads
        self._drawn_at = 0.0
        # The step's unfinished Progress objects, oldest first; one whose function returned without finishing it (a
        # search out of time) goes with it.
        self._under_way: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()

    def done(self, title: str, seconds: float, note: str = "") -> None:
        """Report a step that ran before the reporter existed (the servers, started while Django loads)."""
        self.number += 1
        self._write(f"{self._prefix(title)} {_result(seconds, note)}\n")

    def heading(self, title: str) -> str:
        """The numbered title of the next step, for one whose end the caller reports itself."""
        self.number += 1
        return self._prefix(title)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[StepOutcome]:
        from graph_app.interface import progress_observed

        self.number += 1
        prefix = self._prefix(title)
        outcome = StepOutcome()
        started = time.monotonic()
        self._under_way.clear()
        self._write(f"\r{prefix}\x1b[K" if self._tty else f"{prefix} ")
        try:
            with progress_observed(lambda progress: self._advanced(prefix, progress)):
                yield outcome
        except BaseException:
            self._end(prefix, "interrupted")
            raise
        self._end(prefix, outcome.note if outcome.skipped else _result(time.monotonic() - started, outcome.note))

    def _prefix(self, title: str) -> str:
        return f"[{self.number}/{self.total}] {title} ..."

    def _end(self, prefix: str, result: str) -> None:
        self._write(f"\r{prefix} {result}\x1b[K\n" if self._tty else f"{result}\n")

    def _advanced(self, prefix: str, progress: Any) -> None:
        if self._tty:
            with self._lock:
                self._redraw(prefix, progress)

    def _redraw(self, prefix: str, progress: Any) -> None:
        over = progress.finished or (progress.total is not None and progress.done >= progress.total)
        if over:
            self._under_way.pop(id(progress), None)
        else:
            self._under_way.setdefault(id(progress), progress)
        now = time.monotonic()
        if now - self._drawn_at < REDRAW_EVERY_SECONDS:
            return
        self._drawn_at = now
        progress = next(iter(self._under_way.values()), progress)
        if progress.total:
            share = min(1.0, progress.done / progress.total)
            filled = round(share * BAR_WIDTH)
            bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * share:3.0f}%"
            counts = f"{progress.done:,} of {progress.total:,}"
        else:
            bar, counts = "", f"{progress.done:,}"
        line = f"{prefix} {bar} {progress.step}: {counts}"
        width = shutil.get_terminal_size().columns - 1
        self._write(f"\r{line[:width]}\x1b[K")

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()


def _result(seconds: float, note: str = "") -> str:
    return f"100% {seconds:.1f} s" + (f" ({note})" if note else "")


@contextlib.contextmanager
def setup_log_to_file(path: Path) -> Iterator[None]:
    """During set-up, this process's INFO lines go to `path` instead of the terminal, where the numbered steps say
    what is happening; warnings and errors still show on both."""
    root = logging.getLogger()
    shown = [h for h in root.handlers if type(h) is logging.StreamHandler]
    levels = [h.level for h in shown]
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, mode="w", encoding="utf-8")
    if shown:
        to_file.setFormatter(shown[0].formatter)
    root.addHandler(to_file)
    for handler in shown:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(shown, levels, strict=True):
            handler.setLevel(level)
        root.removeHandler(to_file)
        to_file.close()


@contextlib.contextmanager
def terminal_foreground() -> Iterator[None]:
    """Ctrl-C for this process alone, not for the `make` that started it.

    A terminal sends Ctrl-C's SIGINT to its whole foreground process group, `make run`'s make included, and make
    then dies of it ("make: *** [run] Interrupt", status 130) whatever its recipe does or traps. So when this process
    is not the leader of its group (it was started by make, not by a shell), it moves into a group of its own and
    makes that the terminal's foreground: make waits in the background and exits with our status. Ctrl-Z is
    ignored meanwhile (it would stop us with no shell job to resume us), and the terminal goes back at the end.
    The shell's SIGHUP when its window closes now goes to make alone: a thread watches the terminal and sends us
    SIGHUP when it hangs up (before the supervisor handles it, it interrupts the set-up like Ctrl-C)."""
    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
    except OSError:  # no controlling terminal: a pipe, a service, a test
        yield
        return
    try:
        previous = os.tcgetpgrp(terminal)
        if os.getpgrp() == os.getpid() or previous != os.getpgrp():
            yield  # already our own group (started by a shell), or running in the background
            return
        os.setpgid(0, 0)
        # A process that is not in the foreground group is stopped by SIGTTOU when it calls tcsetpgrp.
        ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        tstp = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
        hup = signal.signal(signal.SIGHUP, signal.default_int_handler)
        os.tcsetpgrp(terminal, os.getpgrp())
        done = threading.Event()
        threading.Thread(target=_hangup_watch, args=(terminal, done), daemon=True).start()
        try:
            yield
        finally:
            done.set()
            with contextlib.suppress(OSError):  # the terminal closed, or make is gone
                os.tcsetpgrp(terminal, previous)
            for signum, handler in ((signal.SIGTTOU, ttou), (signal.SIGTSTP, tstp), (signal.SIGHUP, hup)):
                signal.signal(signum, handler)
    finally:
        os.close(terminal)


def _hangup_watch(terminal: int, done: threading.Event) -> None:
    while not done.wait(HANGUP_POLL_SECONDS):
        try:
            os.tcgetpgrp(terminal)
        except OSError:  # EIO: the terminal hung up
            os.kill(os.getpid(), signal.SIGHUP)
            return


@dataclass(frozen=True)
class Addresses:
    """Where the run command's servers listen (kept in the data folder for `platform_info`)."""

    host: str
    port: int
    ws_port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def probe_host(self) -> str:
        """The address to reach the servers from this machine (0.0.0.0 listens everywhere, including here)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


def addresses_store(data_dir: Path, addresses: Addresses) -> None:
    (data_dir / ADDRESSES_FILE).write_text(json.dumps(addresses.__dict__))


def addresses_read(data_dir: Path) -> Addresses | None:
    try:
        return Addresses(**json.loads((data_dir / ADDRESSES_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class ReadinessCheck:
    """One thing that must answer before the banner is printed: `answers()` asks it once."""

    name: str
    answers: Callable[[], bool]


def readiness_checks(addresses: Addresses, *, worker_nodes: list[str], events_node: str) -> list[ReadinessCheck]:
    """The web processes' /readyz (PostgreSQL and Redis reached), the WebSocket server's /healthz, a Celery ping
    of each worker, and beat: a drain task it sent has run on the events worker."""
    host = addresses.probe_host
    return [
        http_check("web", f"http://{host}:{addresses.port}/readyz"),
        http_check("ws", f"http://{host}:{addresses.ws_port}/healthz"),
        *celery_checks(worker_nodes=worker_nodes, events_nodes=[events_node]),
    ]


def http_check(name: str, url: str) -> ReadinessCheck:
    return ReadinessCheck(name, lambda: http_ok(url))


def celery_checks(*, worker_nodes: list[str], events_nodes: list[str]) -> list[ReadinessCheck]:
    """A Celery ping of each worker, and beat: a drain task it sent has run on one of the events workers."""
    from config.celery import app

    def pinged(node: str) -> Callable[[], bool]:
        return lambda: bool(app.control.ping(destination=[node], timeout=0.5))

    def beat_sent_a_drain() -> bool:
        stats = app.control.inspect(destination=events_nodes, timeout=0.5).stats() or {}
        return any(node.get("total", {}).get("signals.events_drain") for node in stats.values())

    return [
        *[ReadinessCheck(node.split("@")[0], pinged(node)) for node in worker_nodes],
        ReadinessCheck("beat", beat_sent_a_drain),
    ]


def readiness_wait(
    checks: list[ReadinessCheck], *, stopping: threading.Event, still_waiting: Callable[[list[str]], None]
) -> bool:
    """Ask each check until all have answered once (True), or until `stopping` is set (False)."""
    waiting = list(checks)
    reported = time.monotonic()
    while waiting:
        for check in list(waiting):
            try:
                answered = check.answers()
            except Exception as error:  # a broker not reachable yet, a reply that is not JSON...
                logger.debug("run.readiness_check_failed", extra={"check": check.name, "error": str(error)})
                answered = False
            if answered:
                waiting.remove(check)
        if not waiting:
            return True
        if time.monotonic() - reported >= STILL_WAITING_EVERY_SECONDS:
            reported = time.monotonic()
            still_waiting([check.name for check in waiting])
        if stopping.wait(READY_POLL_SECONDS):
            return False
    return True


def example_shopper() -> str:
    """A shopper with history, for the example request (the demo's customers; any id works)."""
    from graph_app.interface import shopper_ids_first

    return next(iter(shopper_ids_first(limit=1)), "u1")


def display_path(path: Path) -> str:
    """The path relative to the working directory when it is below it (`.data/...`), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def banner(
    *,
    heading: str,
    addresses: Addresses,
    admin_password: str | None,
    demo_api_key: str,
    example_user: str,
    credentials_path: Path,
    footer: list[str],
    again_command: str = "platform_info",
) -> str:
    """The URLs, the console login and the demo API key, as `make run` and `manage.py platform_info` print them
    (`make cluster` and `manage.py cluster_info` too)."""
    base, key = addresses.base_url, demo_api_key
    password = (
        f"password {admin_password}"
        if admin_password is not None
        else f"password changed since the first run (reset: .venv/bin/python manage.py changepassword {ADMIN_USERNAME})"
    )
    return "\n".join(
        [
            "",
            heading,
            f"  API docs   {base}/api/v1/docs/   (open to anyone; Authorize with the API key to try calls)",
            f"  Admin      {base}/admin/   user '{ADMIN_USERNAME}', {password}",
            f"  Demo page  {base}/demo/   (log in to the admin first)",
            f"  WebSocket  {addresses.ws_url}/ws/v1/recommendations/?user_id=...&api_key=...",
            f"  API key    {key}",
            f"  Try        curl -H 'Authorization: Bearer {key}' \\",
            f"               '{base}/api/v1/recommendations?user_id={example_user}&placement=home'",
            f"  Again      .venv/bin/python manage.py {again_command}   (kept in {display_path(credentials_path)})",
            *footer,
            "",
        ]
    )
