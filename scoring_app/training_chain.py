"""The scheduled training chain, run now: the tasks Celery beat runs on their schedules, in their order, in process.

`manage.py train` and the offline evaluations call this, so what they measure is what beat trains: each task is
looked up by its registered name and applied as beat would send it (same code, same settings), one after the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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


def training_chain_run(*, progress: Callable[[str], None] | None = None) -> list[TaskRun]:
    """Apply every training task in order (eagerly, in this process); a task's failure is raised."""
    from config.celery import app

    say = progress or (lambda message: None)
    app.loader.import_default_modules()  # the apps' tasks modules (autodiscovery is lazy outside a worker)
    runs: list[TaskRun] = []
    for name in TRAINING_TASKS:
        say(f"{name}: running")
        started = time.monotonic()
        outcome = app.tasks[name].apply(throw=True)
        run = TaskRun(name, round(time.monotonic() - started, 2), outcome.result)
        runs.append(run)
        say(f"{name}: done in {run.seconds:.1f} s")
    return runs
