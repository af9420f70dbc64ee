"""How much of the machine a training takes: every core for its numeric work, at a lower CPU priority than serving.

Trainings run in background workers beside the web processes. Giving them every core (BLAS, implicit's and
faiss's OpenMP threads) halves the nightly window on a small machine; lowering their scheduling priority
(`nice`) keeps serving first in line for the CPU whenever a request is running, so its latency does not pay for
the extra threads. Both are settings: TRAINING_THREADS (0: the machine's cores) and TRAINING_NICENESS.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from django.conf import settings

logger = logging.getLogger(__name__)


def training_threads() -> int:
    """Threads a training's numeric work may use (TRAINING_THREADS, or every core the process may run on)."""
    configured = int(settings.TRAINING_THREADS)
    if configured > 0:
        return configured
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def training_threads_used(*, blas: bool = True) -> Iterator[int]:
    """Within the block, OpenMP (implicit, faiss) and, with `blas`, BLAS (numpy, scipy) use `training_threads()`
    threads. Without `blas`, BLAS gets one: code that runs its own threads around BLAS calls (implicit's ALS)
    would otherwise start threads within threads."""
    from threadpoolctl import threadpool_limits

    threads = training_threads()
    with threadpool_limits(limits={"openmp": threads, "blas": threads if blas else 1}):
        yield threads


def training_priority_lower() -> None:
    """Lower this process's CPU priority to TRAINING_NICENESS (once: a process's niceness only goes up)."""
    wanted = int(settings.TRAINING_NICENESS)
    current = os.nice(0)
    if wanted > current:
        os.nice(wanted - current)
        logger.info("personalization.training_priority_lowered", extra={"niceness": wanted})
