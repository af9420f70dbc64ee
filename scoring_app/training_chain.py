"""The scheduled training chain, run now: the tasks Celery beat runs on their schedules, in their order, in process.

`manage.py train` and the offline evaluations call this, so what they measure is what beat trains: each task is
looked up by its registered name and applied as beat would send it (same code, same settings), one after the other.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Beat's training tasks, in the order a fresh platform needs them: popularity feeds the "popular" source and the
# quality gate's baseline, embeddings feed the neighbour lists and the ranker's retrieval features, the ranker
# learns from all of it, and the serving snapshot tells every process which versions to load.
TRAINING_TASKS: tuple[str, ...] = (
    "signals.popularity_refresh",
    "graph.embeddings_train",
    "graph.neighbourhoods_refresh",
    "graph.features_materialize",
    "scoring.ranker_train",
    "scoring.models_serving_publish",
)


@dataclass(frozen=True)
class TaskRun:
    task: str
    seconds: float
    result: Any
    # The process's peak resident memory while the task ran (None where /proc does not say).
    peak_rss_mib: float | None = None


def _peak_rss_reset() -> None:
    """Start a new peak-RSS measurement (Linux: writing 5 to clear_refs resets the process's VmHWM)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mib() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def training_chain_run(*, progress: Callable[[str], None] | None = None, skip: Collection[str] = ()) -> list[TaskRun]:
    """Apply every training task in order (eagerly, in this process), but those named in `skip`; a task's failure
    is raised."""
    from config.celery import app

    say = progress or (lambda message: None)
    app.loader.import_default_modules()  # the apps' tasks modules (autodiscovery is lazy outside a worker)
    runs: list[TaskRun] = []
    unknown = set(skip) - set(TRAINING_TASKS)
    if unknown:
        raise ValueError(f"not a training task: {', '.join(sorted(unknown))}")
    chosen = [name for name in TRAINING_TASKS if name not in skip]
    for name in chosen:
        say(f"{name}: running (step {len(runs) + 1} of {len(chosen)}; each step logs its progress)")
        _peak_rss_reset()
        started = time.monotonic()
        outcome = app.tasks[name].apply(throw=True)
        run = TaskRun(name, round(time.monotonic() - started, 2), outcome.result, _peak_rss_mib())
        runs.append(run)
        say(f"{name}: done in {run.seconds:.1f} s, peak memory {run.peak_rss_mib} MiB")
    return runs
