"""What the ranker's logging policy costs a served slate (issue 22): the draw with its exact propensities
(`ranking_exploration.slate_draw`, on the serving path of every ranked request) and the pool's log record
(`RankerPool.record`, built by the Surface for the impression stream), in process, on synthetic scores and feature
rows of the serving shape (300 candidates, the feature store's columns); and the estimators of `evaluate_policy`
(`off_policy.policy_evaluate`) on as many logged slates as the console (3,000) and the command (20,000) read.

    .venv/bin/python benchmarks/ranker_logging.py [--requests 2000] [--slates 3000 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def _speed_ms() -> float:
    """A 2 M-iteration Python loop, best of 3 (the machine's speed reading, as the other benchmarks give it)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for number in range(2_000_000):
            total += number
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--slates", type=int, nargs="*", default=[3000, 20000])
    arguments = parser.parse_args()

    import django

    django.setup()
    import numpy as np
    import orjson

    from graph_app.features.definitions import FEATURE_NAMES
    from personalization.candidates import Candidate
    from scoring_app.engine.ranking_exploration import ExplorationPolicy, policy_from_settings, slate_draw
    from scoring_app.engine.scoring import RankerPool
    from scoring_app.off_policy import LoggedSlate, policy_evaluate

    generator = np.random.default_rng(1)
    serving = policy_from_settings()
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, speed {_speed_ms():.0f} ms")
    print(f"policy: share {serving.share}, temperature {serving.temperature}, pool {serving.pool}")
    for slots in (5, 10, 20):
        for label, policy in (("serving policy", serving), ("exploration off", ExplorationPolicy(0.0, 1.0, 30))):
            timings = []
            for _ in range(arguments.requests):
                scores = generator.normal(size=arguments.candidates)
                started = time.perf_counter()
                slate_draw(scores=scores, k=slots, policy=policy, rng=generator)
                timings.append((time.perf_counter() - started) * 1000)
            timings.sort()
            print(
                f"slate_draw k={slots:>2} {label:<15}: p50 {statistics.median(timings):.3f} ms, "
                f"p99 {timings[int(len(timings) * 0.99)]:.3f} ms"
            )
    features = generator.normal(size=(serving.pool, len(FEATURE_NAMES)))
    item_ids = [f"sku-{generator.integers(10**6):07d}" for _ in range(serving.pool)]
    pool = RankerPool(item_ids, FEATURE_NAMES, features, generator.normal(size=serving.pool), serving)
    items = [Candidate(item_id, 0.5, "similar", "") for item_id in item_ids[:10]]
    for slot, item in enumerate(items):
        item.logging_slot, item.logging_propensity = slot, 0.123456789
    timings = []
    for _ in range(arguments.requests):
        started = time.perf_counter()
        entry = orjson.dumps(pool.record(items))
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"pool record ({serving.pool} items, {len(FEATURE_NAMES)} features, 10 slots): {len(entry):,} bytes, "
        f"built and encoded in p50 {statistics.median(timings) * 1000:.0f} µs"
    )
    for count in arguments.slates:
        slates, targets = [], []
        for _ in range(count):
            scores = generator.normal(size=serving.pool)
            draw = slate_draw(scores=scores, k=10, policy=serving, rng=generator)
            pool_features = generator.normal(size=(serving.pool, len(FEATURE_NAMES)))
            rewards = (generator.random(10) < 0.05).astype(np.float64)
            slates.append(LoggedSlate(pool_features, scores, draw.rows, draw.propensities, rewards))
            targets.append(scores + generator.normal(scale=0.5, size=serving.pool))
        policy = ExplorationPolicy(serving.share, serving.temperature, serving.pool)
        started = time.perf_counter()
        policy_evaluate(slates=slates, target_scores=targets, policy=policy, rng=np.random.default_rng(0))
        print(f"policy_evaluate, {count:,} slates of 10 slots: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
