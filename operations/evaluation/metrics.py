"""Top-k metrics as Microsoft Recommenders computes them (recommenders/evaluation/python_evaluation.py).

Binary relevance; averages over every test user (a user without a hit counts 0). nDCG uses 1/log(1 + rank) and
an ideal DCG over min(relevant, k) slots; MAP (the benchmark's `map`) sums j / rank over the hits and divides by
the user's full number of relevant items.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence, Set

TOP_K = 10
METRIC_NAMES = ("MAP", "nDCG@10", "Precision@10", "Recall@10")


def top_k_metrics(
    *,
    recommended: Mapping[Hashable, Sequence[Hashable]],
    relevant: Mapping[Hashable, Set[Hashable]],
    k: int = TOP_K,
) -> dict[str, float]:
    """MAP, nDCG@k, Precision@k and Recall@k averaged over the users of `relevant` (those with test items)."""
    totals = dict.fromkeys(("map", "ndcg", "precision", "recall"), 0.0)
    users = [user for user, items in relevant.items() if items]
    for user in users:
        truth = relevant[user]
        hits = [rank for rank, item in enumerate(recommended.get(user, ())[:k], start=1) if item in truth]
        ideal = sum(1.0 / math.log(1 + rank) for rank in range(1, min(len(truth), k) + 1))
        totals["ndcg"] += sum(1.0 / math.log(1 + rank) for rank in hits) / ideal
        totals["map"] += sum(found / rank for found, rank in enumerate(hits, start=1)) / len(truth)
        totals["precision"] += len(hits) / k
        totals["recall"] += len(hits) / len(truth)
    count = len(users) or 1
    return {
        "MAP": totals["map"] / count,
        f"nDCG@{k}": totals["ndcg"] / count,
        f"Precision@{k}": totals["precision"] / count,
        f"Recall@{k}": totals["recall"] / count,
    }
