"""Retraining the ranker (control plane: ORM and SQL are fine here).

Training rows come from the offline materialization of the feature store (point in time), so the model learns
on exactly the values serving computes online. Labels:
- from attributed impressions once there are enough slates that got a reaction: each served slate is a query,
  its items labelled 3 (bought), 1 (clicked or added to cart), 0 (shown, ignored);
- before that, from interactions: each recent positive event is a query of the item it touched (labelled by how
  strong the event was) and sampled negatives, with features as of just before the event.

The newest fifth of the queries (by time) is the holdout: the new model and the active one are both scored on
it (nDCG@10, recall@20) and the new one is promoted only if it is not worse; otherwise it stays a candidate with
its numbers, for staff to look at, canary or promote by hand.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.db.models import Count, Q
from django.utils import timezone

from graph_app.features.definitions import FEATURE_INDEX, FEATURE_NAMES
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.models import FeatureRow, Item
from scoring_app.engine.ranking import ranker_inputs, ranker_load
from scoring_app.models import ModelVersion
from scoring_app.ranker import RankingData, ranker_fit, ranking_metrics
from scoring_app.selectors import model_artifact, model_version_active
from scoring_app.services import model_version_create, model_version_promote
from signals_app.models import Event

logger = logging.getLogger(__name__)

TRAINING_WINDOW = timedelta(days=90)
# Slates with a click or purchase needed before impressions replace interactions as the source of labels.
MIN_IMPRESSION_QUERIES = 200
IMPRESSION_QUERIES_MAX = 20_000
INTERACTION_QUERIES_MAX = 5_000
NEGATIVES_PER_QUERY = 15
HOLDOUT_SHARE = 0.2
VALIDATION_SHARE = 0.1
MIN_QUERIES = 20
SAMPLING_SEED = 42
# Interaction labels: how strongly each event type says "relevant".
INTERACTION_LABELS = {"purchase": 3, "add_to_cart": 2, "save": 1, "share": 1, "click": 1, "view": 1, "dwell": 1}


@dataclass(frozen=True)
class RankerTrainingReport:
    model_version: str | None
    promoted: bool
    label_source: str
    queries: int
    rows: int
    holdout: dict[str, float]
    active_holdout: dict[str, float] | None
    seconds: float


@dataclass(frozen=True)
class _Query:
    as_of: datetime
    requests: list[FeatureRequest]
    labels: list[int]


def _impression_queries(since: datetime) -> list[_Query]:
    reacted = (
        FeatureRow.objects.filter(served_at__gte=since)
        .values("request_id")
        .annotate(rows=Count("id"), positives=Count("id", filter=Q(clicked=True)))
        .filter(rows__gte=2, positives__gte=1)
        .order_by("-request_id")
        .values_list("request_id", flat=True)[:IMPRESSION_QUERIES_MAX]
    )
    request_ids = list(reacted)
    if len(request_ids) < MIN_IMPRESSION_QUERIES:
        return []
    by_request: dict[str, list[FeatureRow]] = defaultdict(list)
    for row in FeatureRow.objects.filter(request_id__in=request_ids).order_by("request_id", "slot"):
        by_request[row.request_id].append(row)
    queries = []
    for rows in by_request.values():
        queries.append(
            _Query(
                as_of=rows[0].served_at,
                requests=[FeatureRequest(row.user_key, row.item_id, row.placement, row.served_at) for row in rows],
                labels=[3 if row.purchased else 1 if row.clicked else 0 for row in rows],
            )
        )
    return queries


def _interaction_queries(since: datetime) -> list[_Query]:
    """Recent positive events, each with sampled negatives: half by popularity (hard negatives), half uniform."""
    generator = np.random.default_rng(SAMPLING_SEED)
    positives = list(
        Event.objects.filter(occurred_at__gte=since, type__in=list(INTERACTION_LABELS))
        .exclude(user_id="")
        .exclude(item_id="")
        .order_by("-occurred_at")
        .values_list("user_id", "item_id", "type", "placement", "occurred_at")[:INTERACTION_QUERIES_MAX]
    )
    if not positives:
        return []
    catalog = list(Item.objects.values_list("external_id", flat=True))
    counts: dict[str, int] = defaultdict(int)
    touched: dict[str, set[str]] = defaultdict(set)
    for user_id, item_id, *_ in positives:
        counts[item_id] += 1
        touched[user_id].add(item_id)
    popular = list(counts)
    weights = np.asarray([counts[item_id] for item_id in popular], dtype=np.float64)
    weights /= weights.sum()
    queries = []
    for user_id, item_id, type_name, placement, occurred_at in positives:
        # Just before the event: the event itself must not leak into its own features.
        as_of = occurred_at - timedelta(milliseconds=1)
        negatives: list[str] = []
        for attempt in range(NEGATIVES_PER_QUERY * 4):
            if len(negatives) >= NEGATIVES_PER_QUERY:
                break
            if attempt % 2 == 0:
                candidate = popular[int(generator.choice(len(popular), p=weights))]
            else:
                candidate = catalog[int(generator.integers(len(catalog)))]
            if candidate not in touched[user_id] and candidate not in negatives:
                negatives.append(candidate)
        # The positive at a random position: row order must not tell the model (or the metrics) anything.
        labelled = [(item_id, INTERACTION_LABELS[type_name]), *((negative, 0) for negative in negatives)]
        generator.shuffle(labelled)
        queries.append(
            _Query(
                as_of=as_of,
                requests=[FeatureRequest(user_id, item, placement or "default", as_of) for item, _ in labelled],
                labels=[label for _, label in labelled],
            )
        )
    return queries


def _ranking_data(queries: list[_Query]) -> RankingData:
    requests = [request for query in queries for request in query.requests]
    return RankingData(
        values=features_offline(requests=requests),
        labels=np.asarray([label for query in queries for label in query.labels], dtype=np.int32),
        group_sizes=np.asarray([len(query.requests) for query in queries], dtype=np.int32),
    )


def _active_holdout_metrics(holdout: RankingData) -> tuple[ModelVersion | None, dict[str, float] | None]:
    active = model_version_active(kind=ModelVersion.Kind.RANKER)
    if active is None:
        return None, None
    ranker = ranker_load(model_artifact(version=active.version))
    from graph_app.features.online import FeatureMatrix

    matrix = FeatureMatrix(item_ids=[""] * len(holdout.values), values=holdout.values.copy())
    scores = np.asarray(ranker.booster.predict(ranker_inputs(ranker, matrix), num_threads=1))
    return active, ranking_metrics(scores=scores, data=holdout)


def _slice(data: RankingData, start: int, stop: int) -> RankingData:
    offsets = np.concatenate([[0], np.cumsum(data.group_sizes)])
    return RankingData(
        values=data.values[offsets[start] : offsets[stop]],
        labels=data.labels[offsets[start] : offsets[stop]],
        group_sizes=data.group_sizes[start:stop],
    )


def ranker_train(*, now: datetime | None = None) -> RankerTrainingReport:
    """Train a ranker on the latest window; promote it if its holdout nDCG@10 is not worse than the active one's."""
    started = time.monotonic()
    now = now or timezone.now()
    since = now - TRAINING_WINDOW
    queries = _impression_queries(since)
    label_source = "impressions"
    if not queries:
        queries = _interaction_queries(since)
        label_source = "interactions"
    queries.sort(key=lambda query: query.as_of)
    if len(queries) < MIN_QUERIES:
        logger.info("score.ranker_not_trained", extra={"queries": len(queries)})
        return RankerTrainingReport(None, False, label_source, len(queries), 0, {}, None, 0.0)

    data = _ranking_data(queries)
    holdout_start = int(len(queries) * (1 - HOLDOUT_SHARE))
    validation_start = int(holdout_start * (1 - VALIDATION_SHARE))
    train = _slice(data, 0, validation_start)
    validation = _slice(data, validation_start, holdout_start)
    holdout = _slice(data, holdout_start, len(queries))
    booster = ranker_fit(train=train, valid=validation, feature_names=list(FEATURE_NAMES))
    new_metrics = ranking_metrics(scores=np.asarray(booster.predict(holdout.values, num_threads=1)), data=holdout)
    popularity_metrics = ranking_metrics(
        scores=np.nan_to_num(holdout.values[:, FEATURE_INDEX["item_popularity_7d"]], nan=0.0), data=holdout
    )
    active, active_metrics = _active_holdout_metrics(holdout)
    not_worse = active_metrics is None or not (new_metrics["ndcg@10"] < active_metrics["ndcg@10"] - 1e-9)
    if math.isnan(new_metrics["ndcg@10"]):
        not_worse = active is None

    model_version = model_version_create(
        kind=ModelVersion.Kind.RANKER,
        artifact=booster.model_to_string().encode(),
        metrics={
            "label_source": label_source,
            "queries": len(queries),
            "rows": len(data.values),
            "trees": booster.num_trees(),
            "holdout": new_metrics,
            "holdout_popularity_baseline": popularity_metrics,
            "active_version": active.version if active else None,
            "active_holdout": active_metrics,
            "feature_importance_gain": dict(
                zip(FEATURE_NAMES, (round(float(v), 3) for v in booster.feature_importance("gain")), strict=True)
            ),
        },
        feature_names=list(FEATURE_NAMES),
        training_window=(queries[0].as_of, queries[holdout_start - 1].as_of),
    )
    if not_worse:
        model_version_promote(model_version=model_version)
    report = RankerTrainingReport(
        model_version=model_version.version,
        promoted=not_worse,
        label_source=label_source,
        queries=len(queries),
        rows=len(data.values),
        holdout=new_metrics,
        active_holdout=active_metrics,
        seconds=round(time.monotonic() - started, 3),
    )
    logger.info("score.ranker_trained", extra=report.__dict__)
    return report
