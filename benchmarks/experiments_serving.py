"""Issue 22: what an experiment running on a placement costs a recommendation (the Surface budget).

Fills its own embedded servers (under .data/bench-experiments, unless DATABASE_URL / REDIS_URL are set) with the
end-to-end benchmark's synthetic shop (`benchmarks/recommendations_e2e.py`: log, embeddings, neighbourhoods,
ranker, bandit, the home shelf with its rules and cap), warms --warm-users users' online state, and starts an
experiment on the home shelf whose two variants both serve `current`: what is measured is the experiment's own
cost (the assignment, keeping the shopper's unit), not a treatment's.

Then, in this process, `slate_serve` one request after another, alternating request by request between the rules
snapshot with the experiment and the same snapshot without it (each user asked twice in a row, the order swapped
user by user, so that the second request of a user finds what the first cached either way), p50 / p99 of the whole
request and of its state round trip; and the assignment alone (`RunningExperiment.assign`) per call. The read of
the shopper's unit rides on the state round trip in both settings (it is always queued).

    .venv/bin/python benchmarks/experiments_serving.py [--items 10000 --users 5000 --events 100000]
        [--warm-users 300] [--requests 1000] [--no-record] [--json-out FILE]

`--baseline` serves with whatever snapshot the code builds, no experiment of its own, and prints the figures
(`total, baseline`): for code from before issue 22 (no unit read, no experiments), run from its own checkout on
the same store (`PERSONALIZATION_DATA_DIR`), alternating runs with this code's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault(
    "PERSONALIZATION_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "bench-experiments")
)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from benchmarks.common import django_setup, percentile, record

SECTION = "Issue 22: experiments in serving"
WARM_UP_REQUESTS = 100
ASSIGN_CALLS = 100_000


def experiment_start() -> int:
    """A running experiment on the home shelf, both variants `current` (any earlier one stopped first)."""
    from benchmarks.recommendations_e2e import PLACEMENT
    from surface_app.experiments.models import Experiment
    from surface_app.experiments.services import experiment_create, experiment_stop

    for running in Experiment.objects.filter(status=Experiment.Status.RUNNING):
        experiment_stop(experiment_id=running.pk)
    variants = [
        {"name": "control", "weight": 1, "treatment": {"kind": "current"}},
        {"name": "same", "weight": 1, "treatment": {"kind": "current"}},
    ]
    return experiment_create(name="bench", placement=PLACEMENT, primary_metric="ctr", variants=variants).pk


def snapshots() -> dict[str, object]:
    """The rules snapshot with the experiment and the same without it, at the configuration's current version (so
    that serving keeps whichever is installed)."""
    from personalization import redis_keys
    from personalization.redis_client import get_redis
    from surface_app.rules_compile import rules_snapshot_build

    version = get_redis().get(redis_keys.SURFACE_CONFIG_VERSION) or b"0"
    built = replace(rules_snapshot_build(), version=version)
    return {"experiment": built, "none": replace(built, experiments={})}


def requests_time(users: list[str], requests: int, settings: dict[str, object] | None) -> dict[str, dict[str, float]]:
    """p50 / p99 ms of the state round trip and the whole request in each setting (None: one, "baseline", with the
    snapshot serving builds itself)."""
    from benchmarks.recommendations_e2e import PLACEMENT, K, state_fetch_timed
    from scoring_app.engine.registry import models_refresh
    from scoring_app.engine.retrieval import retrieval_warm_up
    from surface_app.serving import rules, slates

    retrieval_warm_up()
    models_refresh()
    names = list(settings) if settings is not None else ["baseline"]
    rows: dict[str, list[float]] = {f"{part}, {name}": [] for part in ("state", "total") for name in names}
    with state_fetch_timed() as spent:
        for index in range(2 * requests + WARM_UP_REQUESTS):
            with_experiment = settings is not None and (index % 2 == 0) != ((index // 2) % 2 == 1)
            name = "baseline" if settings is None else "experiment" if with_experiment else "none"
            if settings is not None:
                rules._current[0] = settings[name]  # type: ignore[assignment]
            spent.clear()
            started = time.perf_counter()
            slate = slates.slate_serve(user_key=users[(index // 2) % len(users)], placement=PLACEMENT, k=K)
            total = (time.perf_counter() - started) * 1000
            if index < WARM_UP_REQUESTS:
                continue
            if (getattr(slate, "experiment", None) is not None) != with_experiment:
                raise RuntimeError(f"request {index}: served {slate.experiment} with {name}")
            rows[f"state, {name}"].append(spent[0])
            rows[f"total, {name}"].append(total)
    return {
        name: {"p50": round(percentile(values, 0.5), 3), "p99": round(percentile(values, 0.99), 3)}
        for name, values in rows.items()
    }


def assign_cost(snapshot: object) -> float:
    """Microseconds a call of the assignment (hash and bounds walk), over ASSIGN_CALLS shoppers."""
    running = next(iter(snapshot.experiments.values()))  # type: ignore[attr-defined]
    units = [f"user-{number}" for number in range(ASSIGN_CALLS)]
    started = time.perf_counter()
    for unit in units:
        running.assign(unit)
    return (time.perf_counter() - started) * 1e6 / ASSIGN_CALLS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--warm-users", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000, help="requests of each setting")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--baseline", action="store_true", help="no experiment; print only (see above)")
    parser.add_argument("--json-out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    django_setup()
    from django.core.management import call_command

    from benchmarks import recommendations_e2e as e2e

    call_command("migrate", verbosity=0)
    e2e.prepare_data(args)
    e2e.placement_configure()
    users = e2e.users_choose(args.warm_users)["warm"]
    e2e.streams_drain()
    e2e.per_user_state_reset(users)
    e2e.online_state_warm(users)
    if args.baseline:
        figures = requests_time(users, 2 * args.requests, None)
        print(figures, flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps(figures))
        return
    experiment_id = experiment_start()
    settings = snapshots()
    figures = requests_time(users, args.requests, settings)
    micro = assign_cost(settings["experiment"])
    print(figures, f"assign: {micro:.2f} µs a call", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps({**figures, "assign_us": micro}))
    lines = "\n".join(f"| {name} | {values['p50']} | {values['p99']} |" for name, values in sorted(figures.items()))
    body = (
        f"{args.items:,} items, {args.users:,} users, {args.events:,} events (the end-to-end benchmark's shop); "
        f"{len(users)} warm users; placement `home` (k=10, its rules and cap); experiment {experiment_id} with two "
        f"`current` variants. In process, {args.requests} requests of each setting, alternating request by "
        "request (each user twice in a row, the order swapped user by user), ms:\n\n"
        "| | p50 | p99 |\n|---|---|---|\n"
        f"{lines}\n\n"
        f"The assignment alone (`RunningExperiment.assign`: a blake2b of salt and unit, a walk over the bounds): "
        f"{micro:.2f} µs a call ({ASSIGN_CALLS:,} shoppers)."
    )
    if not args.no_record:
        command = (
            f"python benchmarks/experiments_serving.py --items {args.items} --users {args.users} "
            f"--events {args.events} --warm-users {args.warm_users} --requests {args.requests}"
        )
        record(SECTION, command, body)
    print(body)


if __name__ == "__main__":
    main()
