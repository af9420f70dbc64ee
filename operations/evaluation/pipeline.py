"""The evaluation itself: MovieLens through the platform as a shop would run it, scored on what it serves.

1. The catalog goes in through `item_upsert`, the ratings through `events_ingest` (the service behind
   `POST /api/v1/events`), as `purchase` events with their timestamps moved so that the training ratings end a
   minute before the run (a live shop's log); the event streams are drained into the log as the consumers do.
2. The scheduled training chain runs as Celery beat runs it (`scoring_app.training_chain`): popularity,
   embeddings (with their holdout search and quality gate), neighbourhoods, features, the ranker (search and gate),
   the serving snapshot.
3. Each test user's slate comes from `slate_serve`, the function that answers `GET /api/v1/recommendations`
   (k=10, in a placement with the default settings): the user's training items are left out by the platform's own
   "already bought" rule, and nothing in between is evaluation-only.

Rows: `served` (training's search on, as production trains by default), `served_default` (the same path with
TRAINING_SEARCH off: the default settings only, still gated; trained first, so the searched training runs as a
retraining that must beat it), `popularity` (offline: items by training events, the user's own left out).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from redis.exceptions import RedisError

from operations.evaluation.ingest import catalog_load, movie_item_id, rating_events, user_key
from operations.evaluation.metrics import TOP_K, top_k_metrics
from operations.evaluation.movielens import MovieLensData
from operations.evaluation.serving import serving_without_deadlines
from operations.evaluation.split import stratified_split
from personalization import redis_keys

Progress = Callable[[str], None]
INGEST_BATCH = 500
INGEST_ATTEMPTS = 5
# The placement asked for: unknown to the console, so it has the default settings (no diversity rule, no caps).
PLACEMENT = "movielens"


@dataclass
class EvaluationResult:
    split: str
    seed: int
    train_rows: int
    test_rows: int
    test_users: int
    results: dict[str, dict[str, float]]
    # Not what users get: parts of the served path measured alone, to tell where quality is lost.
    research: dict[str, dict[str, float]]
    diagnostics: dict[str, Any]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in metrics.items()}


def _pairs(ratings: np.ndarray) -> dict[str, set[str]]:
    relevant: dict[str, set[str]] = defaultdict(set)
    for user_id, movie_id in ratings[:, :2].tolist():
        relevant[user_key(user_id)].add(movie_item_id(movie_id))
    return relevant


def events_load(*, ratings: np.ndarray, end: datetime, say: Progress) -> dict[str, int]:
    """The ratings through the ingest service, shifted to end at `end`, then drained into the log."""
    from signals_app.interface import events_drain_all, events_ingest

    events = rating_events(ratings, end=end)
    accepted = 0
    for start in range(0, len(events), INGEST_BATCH):
        report = _ingest_with_retries(events_ingest, events[start : start + INGEST_BATCH])
        if report.rejected:
            raise ValueError(f"ratings refused by validation: {report.errors[:3]}")
        accepted += report.accepted
        if start % (INGEST_BATCH * 40) == 0:
            say(f"ingested {start + INGEST_BATCH} of {len(events)}")
    stored = 0
    while True:
        drained = events_drain_all()
        stored += drained.stored
        if not drained.read:
            break
    return {"accepted": accepted, "stored": stored}


def _ingest_with_retries(ingest: Callable[..., Any], batch: list[dict[str, object]]) -> Any:
    """As a storefront does after a 503: send the batch again (event ids make that safe) when the hot path's
    short Redis timeout expires on a busy machine."""
    for attempt in range(INGEST_ATTEMPTS):
        try:
            return ingest(raw_events=batch)
        except RedisError:
            if attempt == INGEST_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def published_lists(*, key: Callable[[int], str], users: list[str], k: int) -> dict[str, list[str]]:
    """Research rows: the first k items of each user's list published by training under `key` (the "user_vector"
    source's nearest lists, the embeddings' own ranking; the "item_model" source's lists), without what the user
    bought."""
    import orjson

    from personalization import redis_keys
    from personalization.redis_client import get_control_redis

    client = get_control_redis()
    found = {}
    for user in users:
        payload = client.hget(key(redis_keys.partition_of(user)), user)
        found[user] = [item for item, _ in orjson.loads(payload)][:k] if payload else []
    return found


def popularity_top(*, train: np.ndarray, users: list[str], k: int) -> dict[str, list[str]]:
    counts = Counter(movie_item_id(movie) for movie in train[:, 1].tolist())
    order = sorted(counts, key=lambda item: (-counts[item], item))
    seen = _pairs(train)
    return {user: [item for item in order if item not in seen[user]][:k] for user in users}


def served_top(*, users: list[str], k: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Each user's slate from the serving function, and how many slates each Score path chose, each source
    filled and each degradation touched (none is expected: see serving_without_deadlines)."""
    from surface_app.interface import slate_serve

    recommended: dict[str, list[str]] = {}
    paths: Counter[str] = Counter()
    with serving_without_deadlines():
        for user in users:
            slate = slate_serve(user_key=user, placement=PLACEMENT, k=k)
            recommended[user] = [item.item_id for item in slate.items]
            paths[slate.path] += 1
            paths.update(f"source:{item.source}" for item in slate.items)
            paths.update(f"degraded:{reason}" for reason in slate.degraded)
    return recommended, dict(sorted(paths.items()))


def _train(*, search: bool, say: Progress) -> list[dict[str, Any]]:
    from scoring_app.interface import training_chain_run

    previous = settings.TRAINING_SEARCH
    settings.TRAINING_SEARCH = search
    try:
        runs = training_chain_run(progress=say)
    finally:
        settings.TRAINING_SEARCH = previous
    return [{"task": run.task, "seconds": run.seconds, "result": _summary(run.result)} for run in runs]


def _summary(result: Any) -> Any:
    """What a task's report says about quality (its gate and settings), without the bulky parts."""
    if not isinstance(result, dict):
        return result
    kept = ("model_version", "promoted", "gate", "settings", "item_model", "label_source", "queries", "seconds")
    return {name: result[name] for name in kept if name in result}


def evaluate(
    *, data: MovieLensData, validation: bool = False, seed: int = 42, progress: Progress | None = None
) -> EvaluationResult:
    """Run the protocol inside the current (scratch) stores; with `validation`, on the validation split carved
    out of the training rows (for tuning) instead of the test split."""
    started = time.monotonic()
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        return time.monotonic()

    train_mask = stratified_split(groups=data.movie_ids, seed=seed)
    train, test = data.ratings[train_mask], data.ratings[~train_mask]
    if validation:
        inner = stratified_split(groups=train[:, 1], seed=seed)
        train, test = train[inner], train[~inner]
    relevant = _pairs(test)
    test_users = sorted(relevant)
    say(f"{'validation' if validation else 'test'} split: {len(train)} training rows, {len(test)} held out")

    clock = time.monotonic()
    catalog_load(data=data)
    clock = lap("catalog", clock)
    # A live shop's log: its latest event a minute ago.
    loaded = events_load(ratings=train, end=datetime.now(UTC) - timedelta(minutes=1), say=say)
    clock = lap("events", clock)

    say("training, search off (the default settings)")
    default_training = _train(search=False, say=say)
    clock = lap("training_default", clock)
    served_default, default_paths = served_top(users=test_users, k=TOP_K)
    clock = lap("serving_default", clock)
    say("training again, search on (as scheduled)")
    searched_training = _train(search=True, say=say)
    clock = lap("training_search", clock)
    served, paths = served_top(users=test_users, k=TOP_K)
    clock = lap("serving", clock)

    research = {
        "user_vector_lists": published_lists(key=redis_keys.user_nearest_lists, users=test_users, k=TOP_K),
        "item_model_lists": published_lists(key=redis_keys.user_item_model_lists, users=test_users, k=TOP_K),
    }
    rows = {
        "served": served,
        "served_default": served_default,
        "popularity": popularity_top(train=train, users=test_users, k=TOP_K),
    }
    return EvaluationResult(
        split="validation" if validation else "test",
        seed=seed,
        train_rows=len(train),
        test_rows=len(test),
        test_users=len(test_users),
        results={
            name: _rounded(top_k_metrics(recommended=top, relevant=relevant, k=TOP_K)) for name, top in rows.items()
        },
        research={
            name: _rounded(top_k_metrics(recommended=lists, relevant=relevant, k=TOP_K))
            for name, lists in research.items()
        },
        diagnostics={
            "events": loaded,
            "paths": {"served": paths, "served_default": default_paths},
            "short_slates": sum(1 for items in served.values() if len(items) < TOP_K),
            "training": {"served": searched_training, "served_default": default_training},
            "seconds_by_phase": timings,
        },
        seconds=round(time.monotonic() - started, 1),
    )
