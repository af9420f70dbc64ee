"""Ranker scoring call: LightGBM's own predict against the same model compiled by lleaves, on one thread.

What serving's `ranker_scores` does for one request: 300 candidates (SCORE_CANDIDATES) x the feature store's
columns, NaN where a feature is missing. The models are fitted with the project's LightGBM settings
(scoring_app.ranker.LIGHTGBM_PARAMS) and each setting of the training's search grid, on synthetic queries whose
labels follow the features, so the trees are as deep and as many as the ones training produces.

Pure CPU in one process: no server is needed (the URLs below only keep Django from starting embedded ones).
lleaves is not a dependency of the project (it pinned llvmlite 0.43, Python <= 3.12): to measure it again,
`.venv/bin/pip install lleaves==1.3.0 llvmlite==0.43.0` on Python 3.11 first.

    .venv/bin/python benchmarks/ranker_compile.py [--calls 3000] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", "postgresql://bench@localhost/none")
os.environ.setdefault("REDIS_URL", "redis://localhost:1/0")
import numpy as np

from benchmarks.common import django_setup, percentile, record

CANDIDATES = 300
QUERIES = 3000
ROWS_PER_QUERY = 40
MISSING_SHARE = 0.25
DECISION = (
    "Decision: lleaves stays where it installs. A request ranks 300 candidates (SCORE_CANDIDATES) once, so it"
    " saves about 2 ms of a 4 to 6 ms recommendation, within the 10 ms retrieval-and-ranking goal either way "
    "but a third of the request. Its cost is the llvmlite 0.43 pin (lleaves 1.3.0, the last release, 2024-12,"
    " needs its legacy pass manager), whose wheels stop at Python 3.12: requirements.txt installs both only "
    "below 3.13 (environment markers), and on 3.13 serving scores with LightGBM itself, quietly "
    "(tests/scoring_app/test_scoring.py). If lleaves gets no release for a newer llvmlite, dropping it costs "
    "those 2 ms and nothing else."
)


def training_data(feature_count: int, rng: np.random.Generator):  # -> RankingData
    from scoring_app.ranker import RankingData

    rows = QUERIES * ROWS_PER_QUERY
    values = rng.normal(size=(rows, feature_count))
    weights = rng.normal(size=feature_count)
    utility = values @ weights + 0.5 * np.sin(3 * values[:, 0]) * values[:, 1] + rng.normal(scale=1.0, size=rows)
    labels = np.digitize(utility, np.quantile(utility, [0.8, 0.93, 0.98])).astype(np.int64)
    values[rng.random(values.shape) < MISSING_SHARE] = np.nan
    return RankingData(values=values, labels=labels, group_sizes=np.full(QUERIES, ROWS_PER_QUERY))


def timed(predict, inputs: np.ndarray, calls: int) -> dict[str, float]:
    for _ in range(50):
        predict(inputs)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(inputs)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"p50": statistics.median(latencies), "p99": percentile(latencies, 0.99)}


def lleaves_model(booster):  # -> lleaves.Model | None
    try:
        import lleaves
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        model_file = Path(folder) / "model.txt"
        model_file.write_text(booster.model_to_string())
        model = lleaves.Model(model_file=str(model_file))
        model.compile()
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--record", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args()
    django_setup()
    from graph_app.features.definitions import FEATURE_NAMES
    from scoring_app.ranker import NUM_BOOST_ROUND, ranker_fit
    from scoring_app.training import RANKER_SEARCH_GRID

    rng = np.random.default_rng(42)
    train = training_data(len(FEATURE_NAMES), rng)
    inputs = np.ascontiguousarray(training_data(len(FEATURE_NAMES), rng).values[:CANDIDATES])
    settings = [({}, NUM_BOOST_ROUND), *RANKER_SEARCH_GRID]
    rows = []
    for params, rounds in settings:
        booster = ranker_fit(train=train, feature_names=list(FEATURE_NAMES), params=params, num_boost_round=rounds)
        leaves = sum(tree["num_leaves"] for tree in booster.dump_model()["tree_info"])
        lightgbm = timed(lambda values, b=booster: b.predict(values, num_threads=1), inputs, args.calls)
        compiled = lleaves_model(booster)
        row = {
            "model": ", ".join(f"{k}={v}" for k, v in params.items()) or "default",
            "trees": booster.num_trees(),
            "leaves": leaves,
            "lightgbm": lightgbm,
            "lleaves": timed(lambda values, m=compiled: m.predict(values, n_jobs=1), inputs, args.calls)
            if compiled
            else None,
        }
        if compiled is not None:
            assert np.allclose(compiled.predict(inputs, n_jobs=1), booster.predict(inputs, num_threads=1))
        rows.append(row)
        print(row, flush=True)

    lines = [
        f"{CANDIDATES} candidates x {len(FEATURE_NAMES)} features ({MISSING_SHARE:.0%} missing), one thread, "
        f"{args.calls} calls after 50 warm-up calls; models fitted with LIGHTGBM_PARAMS and each setting of the "
        f"training's search grid on {QUERIES} synthetic queries of {ROWS_PER_QUERY} rows.",
        "",
        "| model | trees | leaves | LightGBM p50 / p99 (ms) | lleaves p50 / p99 (ms) | saved per request p50 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        light, fast = row["lightgbm"], row["lleaves"]
        lleaves_cell = f"{fast['p50']:.3f} / {fast['p99']:.3f}" if fast else "not installed"
        saved = f"{light['p50'] - fast['p50']:.3f}" if fast else ""
        lines.append(
            f"| {row['model']} | {row['trees']} | {row['leaves']} | {light['p50']:.3f} / {light['p99']:.3f} "
            f"| {lleaves_cell} | {saved} |"
        )
    body = "\n".join([*lines, "", DECISION])
    print(body)
    if args.record:
        record("Score layer: ranker compiled by lleaves or not", "python benchmarks/ranker_compile.py --record", body)


if __name__ == "__main__":
    main()
