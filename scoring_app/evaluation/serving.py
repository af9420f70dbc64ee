"""Serving as the evaluations call it: the production functions, without the latency guards.

The retrieval sources run one after another (SCORE_RETRIEVAL_THREADS=0, as in the tests) and the placement's
deadline is lifted: on a busy machine a source past its deadline is dropped, or the ranker is skipped for a late
candidate set ("score_late"), and the same seed would then give other figures. Latency is the benchmarks' business.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings


@contextmanager
def serving_without_deadlines() -> Iterator[None]:
    threads, factor = settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
    settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = 0, math.inf
    try:
        yield
    finally:
        settings.SCORE_RETRIEVAL_THREADS, settings.SCORE_RETRIEVAL_DEADLINE_FACTOR = threads, factor
