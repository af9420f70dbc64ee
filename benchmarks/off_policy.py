"""Off-policy evaluation against a synthetic shop whose click model is known (issue 22's requested proof).

A SYNTHETIC simulator, not production data: shoppers and items have latent vectors; a request retrieves 60
candidates, whose feature rows are what a ranker sees (per-dimension user x item products, a noisy item quality,
log popularity, one useless column); clicks follow a position-based model, P(click at slot j) = examination(j) *
attractiveness(user, item), examination(j) = 1 / (1 + j)^0.7, attractiveness a logistic function of the same
features without the noise. The serving ranker (a linear scorer with noisy weights) logs slates through serving's
own `slate_draw` (scoring_app.engine.ranking_exploration) with the policy given (default: the production settings),
and the estimators are the command's own `policy_evaluate` (scoring_app.off_policy).

Candidates: a better and a worse linear scorer (less and more noise on the true weights than the serving one), and
`popularity`. Each candidate's true value per slate is measured by serving it in the simulator: `slate_draw` with
its scores and the same policy on fresh requests, each slate valued by its expected clicks (the click model's
probabilities summed over its slots: the same mean as drawing the clicks, with less noise). "Re-ranking the pool"
(what off-policy evaluation can see: the candidate ranks the serving ranker's logged pool) is the estimand;
"own pool" (the candidate picks its own pool from all 60 candidates) is what a full deployment would serve, and the
gap between the two is the part no log of this pool can show.

    .venv/bin/python benchmarks/off_policy.py [--seeds 8] [--impressions 50000] [--sweep] [--record]
        [--share S --temperature T --pool P]   (instead of the settings; about 12 minutes with --sweep here)

Seeded throughout: a second run gives the same table (the timings apart).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DATABASE_URL", "postgresql://bench@localhost/none")
os.environ.setdefault("REDIS_URL", "redis://localhost:1/0")
from benchmarks.common import django_setup, record

# The synthetic world (items, rankers): a seed whose serving ranker sits between the better and the worse one.
WORLD_SEED = 5
ITEMS = 3000
DIMENSIONS = 6
CANDIDATES = 60
SLOTS = 10
EXAMINATION = 1.0 / (1.0 + np.arange(SLOTS)) ** 0.7
TRUTH_REQUESTS = 8000
BASE_LOGIT = -3.6
QUALITY_NOISE = 0.5
FEATURES = DIMENSIONS + 3
# The click model's weights over the feature columns (the quality column is observed with noise, so the true
# attractiveness uses the item's real quality: see _attractiveness).
TRUE_WEIGHTS = np.concatenate([np.ones(DIMENSIONS), [0.5, 0.3, 0.0]])
RANKER_NOISE = {"serving": 0.6, "better": 0.25, "worse": 1.2}


@dataclass(frozen=True)
class Shop:
    item_vectors: np.ndarray  # (items, d)
    item_quality: np.ndarray  # (items,)
    item_log_popularity: np.ndarray  # (items,) standardized
    retrieval_weights: np.ndarray  # (items,) retrieval samples items in proportion
    ranker_weights: dict[str, np.ndarray]  # per linear ranker


@dataclass(frozen=True)
class Request:
    features: np.ndarray  # (candidates, F): what rankers see
    attractiveness: np.ndarray  # (candidates,): the click model's truth


def shop_build(*, seed: int) -> Shop:
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 1.0, ITEMS)
    log_popularity = np.log(popularity)
    rankers = {name: TRUE_WEIGHTS + rng.normal(0.0, noise, FEATURES) for name, noise in RANKER_NOISE.items()}
    return Shop(
        item_vectors=rng.normal(0.0, 1.0, (ITEMS, DIMENSIONS)) / np.sqrt(DIMENSIONS) * 1.2,
        item_quality=rng.normal(0.0, 1.0, ITEMS),
        item_log_popularity=(log_popularity - log_popularity.mean()) / log_popularity.std(),
        retrieval_weights=np.sqrt(popularity) / np.sqrt(popularity).sum(),
        ranker_weights=rankers,
    )


def request_draw(*, shop: Shop, rng: np.random.Generator) -> Request:
    user = rng.normal(0.0, 1.0, DIMENSIONS) / np.sqrt(DIMENSIONS) * 1.2
    items = rng.choice(ITEMS, size=CANDIDATES, replace=False, p=shop.retrieval_weights)
    interactions = shop.item_vectors[items] * user * np.sqrt(DIMENSIONS)
    observed_quality = shop.item_quality[items] + rng.normal(0.0, QUALITY_NOISE, CANDIDATES)
    features = np.column_stack(
        [interactions, observed_quality, shop.item_log_popularity[items], rng.normal(0.0, 1.0, CANDIDATES)]
    )
    truth = features.copy()
    truth[:, DIMENSIONS] = shop.item_quality[items]
    attractiveness = 1.0 / (1.0 + np.exp(-(BASE_LOGIT + truth @ TRUE_WEIGHTS)))
    return Request(features=features, attractiveness=attractiveness)


def candidate_scores(*, shop: Shop, candidate: str, features: np.ndarray) -> np.ndarray:
    if candidate == "popularity":
        return features[:, DIMENSIONS + 1].copy()
    return features @ shop.ranker_weights[candidate]


def serve_value(*, shop: Shop, candidate: str, policy, requests: int, seed: int, own_pool: bool) -> tuple[float, float]:
    """Mean expected clicks per slate of the candidate served with `slate_draw` on fresh requests, and its standard
    error (the requests' spread: the truth is a measurement too)."""
    from scoring_app.engine.ranking_exploration import slate_draw

    # The requests come from their own generator: every policy and candidate is valued on the same requests, so
    # that differences between them (exploration's cost) are not buried in the requests' noise.
    request_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    values = []
    for _ in range(requests):
        request = request_draw(shop=shop, rng=request_rng)
        rows = np.arange(CANDIDATES)
        if not own_pool:  # the serving ranker's pool, re-ranked by the candidate
            serving = candidate_scores(shop=shop, candidate="serving", features=request.features)
            rows = slate_draw(scores=serving, k=SLOTS, policy=policy, rng=rng).pool_rows
        scores = candidate_scores(shop=shop, candidate=candidate, features=request.features[rows])
        drawn = slate_draw(scores=scores, k=SLOTS, policy=policy, rng=rng)
        values.append(float((EXAMINATION[: len(drawn.rows)] * request.attractiveness[rows[drawn.rows]]).sum()))
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


def log_collect(*, shop: Shop, policy, slates: int, seed: int) -> tuple[list, list[np.ndarray]]:
    """Logged slates of the serving ranker and each request's pool features (for the candidates' scores)."""
    from scoring_app.engine.ranking_exploration import slate_draw
    from scoring_app.off_policy import LoggedSlate

    rng = np.random.default_rng(seed)
    logged = []
    for _ in range(slates):
        request = request_draw(shop=shop, rng=rng)
        scores = candidate_scores(shop=shop, candidate="serving", features=request.features)
        drawn = slate_draw(scores=scores, k=SLOTS, policy=policy, rng=rng)
        position_in_pool = {row: at for at, row in enumerate(drawn.pool_rows.tolist())}
        clicks = rng.random(len(drawn.rows)) < EXAMINATION[: len(drawn.rows)] * request.attractiveness[drawn.rows]
        logged.append(
            LoggedSlate(
                pool_features=request.features[drawn.pool_rows],
                logging_scores=scores[drawn.pool_rows],
                shown=np.array([position_in_pool[row] for row in drawn.rows.tolist()]),
                propensities=drawn.propensities,
                rewards=clicks.astype(np.float64),
            )
        )
    return logged, [slate.pool_features for slate in logged]


def evaluate_config(
    *, shop: Shop, policy, seeds: int, impressions: int, candidates: list[str], truth_requests: int
) -> dict:
    """Truths and the estimators' errors over seeds for one exploration policy."""
    from scoring_app.engine.ranking_exploration import ExplorationPolicy
    from scoring_app.off_policy import policy_evaluate

    deterministic = ExplorationPolicy(share=0.0, temperature=policy.temperature, pool=policy.pool)
    measured = {
        name: serve_value(shop=shop, candidate=name, policy=policy, requests=truth_requests, seed=7, own_pool=False)
        for name in candidates
    }
    truth = {name: value for name, (value, _) in measured.items()}
    truth_error = {name: error for name, (_, error) in measured.items()}
    own = {
        name: serve_value(shop=shop, candidate=name, policy=policy, requests=truth_requests, seed=7, own_pool=True)[0]
        for name in candidates
    }
    serving_exploring = serve_value(
        shop=shop, candidate="serving", policy=policy, requests=truth_requests, seed=7, own_pool=True
    )[0]
    serving_deterministic = serve_value(
        shop=shop, candidate="serving", policy=deterministic, requests=truth_requests, seed=7, own_pool=True
    )[0]
    errors: dict[str, dict[str, list[float]]] = {name: {"ips": [], "snips": [], "dr": []} for name in candidates}
    covered: dict[str, dict[str, list[bool]]] = {name: {"ips": [], "snips": [], "dr": []} for name in candidates}
    ess: dict[str, list[float]] = {name: [] for name in candidates}
    seconds: list[float] = []
    for seed in range(seeds):
        logged, pools = log_collect(shop=shop, policy=policy, slates=impressions // SLOTS, seed=100 + seed)
        for name in candidates:
            scores = [candidate_scores(shop=shop, candidate=name, features=pool) for pool in pools]
            started = time.perf_counter()
            estimate = policy_evaluate(
                slates=logged, target_scores=scores, policy=policy, rng=np.random.default_rng(seed)
            )
            seconds.append(time.perf_counter() - started)
            for kind in ("ips", "snips", "dr"):
                one = getattr(estimate, kind)
                errors[name][kind].append(abs(one.value - truth[name]) / truth[name] * 100)
                covered[name][kind].append(one.low <= truth[name] <= one.high)
            ess[name].append(estimate.effective_sample_size)
    return {
        "policy": policy,
        "truth": truth,
        "truth_error": truth_error,
        "own": own,
        "serving_exploring": serving_exploring,
        "serving_deterministic": serving_deterministic,
        "errors": errors,
        "covered": covered,
        "ess": ess,
        "seconds": seconds,
        "slates": impressions // SLOTS,
    }


def config_table(result: dict) -> str:
    lines = [
        "| candidate | true value / slate: re-ranking the pool ± its standard error (own pool) |"
        " IPS error % (covered) | SNIPS error % (covered) | DR error % (covered) | ESS (slates) |",
        "|---|---|---|---|---|---|",
    ]
    for name, truth in result["truth"].items():
        cells = []
        for kind in ("ips", "snips", "dr"):
            errors, covered = result["errors"][name][kind], result["covered"][name][kind]
            cells.append(f"{np.mean(errors):.1f} (max {np.max(errors):.1f}; {sum(covered)}/{len(covered)})")
        lines.append(
            f"| {name} | {truth:.4f} ± {result['truth_error'][name]:.4f} ({result['own'][name]:.4f}) |"
            f" {' | '.join(cells)} | "
            f"{np.mean(result['ess'][name]):.0f} of {result['slates']} |"
        )
    return "\n".join(lines)


def quality_cost(result: dict) -> float:
    return (1 - result["serving_exploring"] / result["serving_deterministic"]) * 100


def hot_path_speed(policy) -> tuple[float, float, float]:
    """slate_draw over 30 scores, k = 10, after warm-up: wall p50 and p99, and the mean CPU time of the thread (what
    the call costs when other processes take turns on the cores), in microseconds."""
    from scoring_app.engine.ranking_exploration import slate_draw

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(3000, 30))
    for row in scores[:200]:
        slate_draw(scores=row, k=SLOTS, policy=policy, rng=rng)
    timings = []
    cpu_started = time.thread_time()
    for row in scores:
        started = time.perf_counter()
        slate_draw(scores=row, k=SLOTS, policy=policy, rng=rng)
        timings.append((time.perf_counter() - started) * 1e6)
    cpu = (time.thread_time() - cpu_started) / len(scores) * 1e6
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 99)), cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--impressions", type=int, default=50_000)
    parser.add_argument("--sweep", action="store_true", help="also other exploration settings (the trade-off)")
    parser.add_argument("--sweep-seeds", type=int, default=3)
    parser.add_argument("--share", type=float, help="instead of SCORE_RANKER_EXPLORATION_SHARE")
    parser.add_argument("--temperature", type=float, help="instead of SCORE_RANKER_EXPLORATION_TEMPERATURE")
    parser.add_argument("--pool", type=int, help="instead of SCORE_RANKER_EXPLORATION_POOL")
    parser.add_argument("--truth-requests", type=int, default=TRUTH_REQUESTS)
    parser.add_argument("--sweep-truth-requests", type=int, default=6000)
    parser.add_argument("--record", action="store_true", help="write the figures to BENCHMARKS.md")
    args = parser.parse_args()
    django_setup()
    from scoring_app.engine.ranking_exploration import ExplorationPolicy, policy_from_settings

    shop = shop_build(seed=WORLD_SEED)
    configured = policy_from_settings()
    policy = ExplorationPolicy(
        share=configured.share if args.share is None else args.share,
        temperature=configured.temperature if args.temperature is None else args.temperature,
        pool=configured.pool if args.pool is None else args.pool,
    )
    candidates = ["better", "worse", "popularity", "serving"]
    started = time.perf_counter()
    main_result = evaluate_config(
        shop=shop,
        policy=policy,
        seeds=args.seeds,
        impressions=args.impressions,
        candidates=candidates,
        truth_requests=args.truth_requests,
    )
    p50, p99, cpu = hot_path_speed(policy)
    body = [
        f"SYNTHETIC simulator (benchmarks/off_policy.py): {ITEMS} items, {CANDIDATES} retrieved candidates per request,"
        f" {SLOTS} slots, position-based clicks (examination 1/(1+slot)^0.7 x logistic attractiveness). The serving"
        " ranker logs through serving's `slate_draw`; the estimates are the command's `policy_evaluate`; each"
        " candidate's truth is measured by serving it with `slate_draw` on"
        f" {args.truth_requests} fresh requests. {args.impressions:,} logged impressions"
        f" ({main_result['slates']} slates) per seed, {args.seeds} seeds.",
        "",
        f"Production defaults: share {policy.share}, temperature {policy.temperature}, pool {policy.pool}."
        f" Serving ranker's value per slate: {main_result['serving_deterministic']:.4f} deterministic,"
        f" {main_result['serving_exploring']:.4f} exploring: exploration costs {quality_cost(main_result):.1f} %"
        " of the serving ranker's clicks.",
        "",
        "Errors are mean absolute % errors against the truth re-ranking the pool (max over seeds), with how many"
        " seeds' 95 % interval covered it:",
        "",
        config_table(main_result),
        "",
        f"`policy_evaluate` of {main_result['slates']} slates: median"
        f" {np.median(main_result['seconds']):.1f} s per candidate. `slate_draw` (30 scores, pool {policy.pool}, k"
        f" {SLOTS}): p50 {p50:.0f} µs, p99 {p99:.0f} µs wall, {cpu:.0f} µs of CPU on average.",
    ]
    if args.sweep:
        rows = [
            "",
            f"The trade-off ({args.sweep_seeds} seeds each, SNIPS and DR errors averaged over the better, worse and"
            " popularity candidates):",
            "",
            "| share | temperature | pool | clicks lost to exploration % | SNIPS error % | DR error % |"
            " DR intervals covering | truth's standard error % |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for share, temperature, pool in [
            (0.2, 1.0, 30),
            (0.3, 1.5, 12),
            (0.5, 1.5, 12),
            (0.7, 1.5, 12),
            (0.5, 2.0, 12),
            (0.7, 1.5, 20),
            (1.0, 1.5, 20),
        ]:
            swept = ExplorationPolicy(share=share, temperature=temperature, pool=pool)
            result = evaluate_config(
                shop=shop,
                policy=swept,
                seeds=args.sweep_seeds,
                impressions=args.impressions,
                candidates=["better", "worse", "popularity"],
                truth_requests=args.sweep_truth_requests,
            )
            snips = np.mean([np.mean(result["errors"][name]["snips"]) for name in result["truth"]])
            dr = np.mean([np.mean(result["errors"][name]["dr"]) for name in result["truth"]])
            covering = [hit for name in result["truth"] for hit in result["covered"][name]["dr"]]
            truth_error = np.mean(
                [result["truth_error"][name] / result["truth"][name] * 100 for name in result["truth"]]
            )
            rows.append(
                f"| {share} | {temperature} | {pool} | {quality_cost(result):.1f} | {snips:.1f} | {dr:.1f} |"
                f" {sum(covering)}/{len(covering)} | {truth_error:.1f} |"
            )
            print(rows[-1], flush=True)
        body.extend(rows)
    text = "\n".join(body)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.record:
        command = "python benchmarks/off_policy.py" + (" --sweep" if args.sweep else "")
        record("Issue 22: off-policy evaluation", command, text)


if __name__ == "__main__":
    main()
