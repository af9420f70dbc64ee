"""Score-layer bandit benchmark: one `bandit_choose` over 50 actions (VW cb_explore_adf with SquareCB) filling 10
slots, plus the `bandit_log` that serving adds to the slate, and the learner's throughput.

Pure CPU in one process: no server is needed (the URLs below only keep Django from starting embedded ones).

    .venv/bin/python benchmarks/bandit_choose.py [--decisions 5000] [--record]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", "postgresql://bench@localhost/none")
os.environ.setdefault("REDIS_URL", "redis://localhost:1/0")
from benchmarks.common import django_setup, percentile, record

ACTIONS = 50
SLOTS = 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--record", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args()
    django_setup()
    from personalization.candidates import Candidate
    from scoring_app.engine.bandit import (
        BanditContext,
        BanditItem,
        action_features,
        bandit_choose,
        bandit_example,
        bandit_log,
        bandit_model_new,
        shared_features,
    )

    rng = random.Random(1)
    categories = [f"category-{n}" for n in range(12)]
    offered = [Candidate(f"sku-{n}", 1 - n / 100, ("similar", "graph", "popular")[n % 3], "") for n in range(ACTIONS)]
    contexts = [
        BanditContext(
            placement=rng.choice(["home", "product", "cart"]),
            hour=rng.randrange(24),
            new_user=rng.random() < 0.3,
            reason="low_confidence",
            top_categories=tuple(rng.sample(categories, 3)),
            top_entities=tuple(f"brand:b{rng.randrange(40)}" for _ in range(5)),
            items={
                candidate.item_id: BanditItem(
                    rng.choice(categories),
                    tuple(f"brand:b{rng.randrange(40)}" for _ in range(3)),
                    popularity_1d=rng.expovariate(0.1),
                    age_days=rng.expovariate(0.01),
                )
                for candidate in offered
            },
        )
        for _ in range(100)
    ]
    model = bandit_model_new()
    # A model that has learned something (its PMF is not uniform), as in production.
    started = time.perf_counter()
    learned = 2000
    for index in range(learned):
        context = contexts[index % len(contexts)]
        [pick] = bandit_choose(model=model, context=context, candidates=offered, k=1, rng=rng)
        actions = [action_features(context, candidate, rank) for rank, candidate in enumerate(offered)]
        chosen = int(pick.item_id[4:])
        cost = -1.0 if context.items[pick.item_id].category in context.top_categories else 0.0
        model.learn(
            bandit_example(
                shared=shared_features(context), actions=actions, chosen=chosen, cost=cost, propensity=pick.propensity
            )
        )
    learn_rate = learned / (time.perf_counter() - started)

    choose_ms: list[float] = []
    log_ms: list[float] = []
    for index in range(args.decisions):
        context = contexts[index % len(contexts)]
        before = time.perf_counter()
        picks = bandit_choose(model=model, context=context, candidates=offered, k=SLOTS, rng=rng)
        between = time.perf_counter()
        bandit_log(context=context, candidates=offered, picks=picks)
        choose_ms.append((between - before) * 1000)
        log_ms.append((time.perf_counter() - between) * 1000)
    result = {
        "choose_p50_ms": round(statistics.median(choose_ms), 3),
        "choose_p99_ms": round(percentile(choose_ms, 0.99), 3),
        "log_p50_ms": round(statistics.median(log_ms), 3),
        "log_p99_ms": round(percentile(log_ms, 0.99), 3),
        "learn_examples_per_second": round(learn_rate),
    }
    print(result)
    if args.record:
        body = (
            f"{args.decisions} decisions, one after another in one process, each {ACTIONS} actions and {SLOTS} "
            "slots, with a model that learned 2,000 examples first.\n\n"
            "| measurement | p50 | p99 |\n|---|---|---|\n"
            f"| `bandit_choose` ({ACTIONS} actions, {SLOTS} slots) | {result['choose_p50_ms']} ms | "
            f"{result['choose_p99_ms']} ms |\n"
            f"| `bandit_log` (features of the unshown actions) | {result['log_p50_ms']} ms | "
            f"{result['log_p99_ms']} ms |\n\n"
            f"Learning (choose one slot and learn it, engine only): {result['learn_examples_per_second']} "
            "examples/s."
        )
        record("Score layer: contextual bandit", "python benchmarks/bandit_choose.py --record", body)


if __name__ == "__main__":
    main()
