from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from personalization.training_compute import training_priority_lower, training_threads, training_threads_used


def test_training_threads_are_the_setting_or_every_core(settings: pytest.FixtureRequest) -> None:
    settings.TRAINING_THREADS = 3
    assert training_threads() == 3
    settings.TRAINING_THREADS = 0
    assert training_threads() == len(os.sched_getaffinity(0))


def test_numeric_libraries_use_the_training_threads_inside_the_block(settings: pytest.FixtureRequest) -> None:
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS loaded
    settings.TRAINING_THREADS = 2
    with training_threads_used() as threads:
        blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert threads == 2
        assert blas and all(pool["num_threads"] == 2 for pool in blas)


def _niceness_after_lowering(wanted: int, before: int, answer: multiprocessing.SimpleQueue) -> None:
    from django.conf import settings

    os.nice(before)
    settings.TRAINING_NICENESS = wanted
    training_priority_lower()
    training_priority_lower()  # a second call leaves it as it is
    answer.put(os.nice(0))


@pytest.mark.parametrize(("wanted", "before"), [(10, 0), (5, 12)])
def test_a_training_process_runs_below_serving_priority(wanted: int, before: int) -> None:
    """In a child process: a process's niceness only goes up, and the test process must keep its own."""
    context = multiprocessing.get_context("fork")
    answer = context.SimpleQueue()
    child = context.Process(target=_niceness_after_lowering, args=(wanted, before, answer))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert answer.get() == max(wanted, os.nice(0) + before)
