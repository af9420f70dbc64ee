"""Serving as the evaluations call it: the production functions, without the latency guards.

The retrieval sources run one after another (SCORE_RETRIEVAL_THREADS=0, as in the tests), the placement's
deadline is lifted and the hot path's Redis client waits as long as the control plane's: on a busy machine a
source past its deadline is dropped, the ranker is skipped for a late candidate set ("score_late"), or a 50 ms
Redis timeout serves a user without their state, and the same seed would then give other figures. Latency is the
benchmarks' business. Exploration (the ranker's drawn slates, the bandit's slots) stays as shoppers get it: what
is measured is what is served. Only its random numbers are held for the run: serving reseeds them per user and
placement every SCORE_EXPLORATION_RESEED_SECONDS, and one window that spans any date gives the same figures for the
same seed at any hour.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from personalization.redis_client import CONTROL_SOCKET_TIMEOUT_SECONDS, connection_pools, get_redis

# An exploration window longer than any date: a user's window (`scoring_app.engine.bandit.exploration_window`) is
# the same all run long.
ONE_WINDOW_SECONDS = float(2**62)


def _socket_timeout_set(pool: Any, seconds: float | None) -> None:
    pool.connection_kwargs["socket_timeout"] = seconds
    # Open connections keep the timeout they were made with: drop them, the next ones are made with this one.
    pool.disconnect()
    pool.reset()


@contextmanager
def serving_without_deadlines() -> Iterator[None]:
    threads, factor = settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
    reseed = settings.SCORE_EXPLORATION_RESEED_SECONDS
    pools = connection_pools(get_redis())
    socket_timeouts = [pool.connection_kwargs.get("socket_timeout") for pool in pools]
    settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = 0, math.inf
    settings.SCORE_EXPLORATION_RESEED_SECONDS = ONE_WINDOW_SECONDS
    for pool in pools:
        _socket_timeout_set(pool, CONTROL_SOCKET_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = threads, factor
        settings.SCORE_EXPLORATION_RESEED_SECONDS = reseed
        for pool, socket_timeout in zip(pools, socket_timeouts, strict=True):
            _socket_timeout_set(pool, socket_timeout)
