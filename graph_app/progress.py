"""Progress of a long training step, logged while it runs: how far it is and how long it should still take.

At a million items and users a training step runs for minutes; the worker's log (and `manage.py train`, which
prints the same lines on stderr) says every PROGRESS_EVERY_SECONDS where each step is, with an estimate of the
time left from its pace so far. `progress_observed` lets a caller follow every step as it advances (the run
command's progress bars).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 10.0
_observers: list[Callable[[Progress], None]] = []


@contextlib.contextmanager
def progress_observed(observer: Callable[[Progress], None]) -> Iterator[None]:
    """Within the block, `observer` is called with each Progress of this process whenever it advances or finishes."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


class Progress:
    """Counts a step's units of work (`total` None: unknown, no estimate) and logs "training.progress" lines at
    most every PROGRESS_EVERY_SECONDS, and once when finished if it logged before (or took that long)."""

    def __init__(self, step: str, *, total: int | None, every_seconds: float = PROGRESS_EVERY_SECONDS) -> None:
        self.step = step
        self.total = total
        self.done = 0
        self.every_seconds = every_seconds
        self.started = time.monotonic()
        self.logged_at = self.started
        self.logged = False
        self.finished = False

    def advance(self, count: int = 1) -> None:
        self.done += count
        self._notify()
        now = time.monotonic()
        if now - self.logged_at >= self.every_seconds:
            self.logged_at = now
            self.logged = True
            self._log(now)

    def finish(self) -> None:
        self.finished = True
        self._notify()
        now = time.monotonic()
        if self.logged or now - self.started >= self.every_seconds:
            self._log(now, finished=True)

    def _notify(self) -> None:
        for observer in _observers:
            observer(self)

    def _log(self, now: float, *, finished: bool = False) -> None:
        elapsed = now - self.started
        extra: dict[str, object] = {"step": self.step, "done": self.done, "elapsed_s": round(elapsed, 1)}
        text = f"{self.step}: {self.done:,}"
        if self.total:
            share = min(1.0, self.done / self.total)
            extra.update(total=self.total, percent=round(100 * share, 1))
            text += f" of {self.total:,} ({100 * share:.0f} %)"
            if not finished and share > 0:
                extra["eta_s"] = round(elapsed * (1 - share) / share, 1)
                text += f", about {extra['eta_s']:.0f} s left"
        text += f", {elapsed:.0f} s so far" if not finished else f", done in {elapsed:.1f} s"
        logger.info(text, extra=extra)
