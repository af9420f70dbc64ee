"""Scheduled offline materialization: every served slate the shopper reacted to (a click, add to cart or purchase
attributed to it within the label window) becomes training rows, one per item shown, with the features the offline
store computes as of the moment it was served (point in time: nothing the shopper did afterwards leaks in) and the
labels of what followed. The items ignored are the slate's negatives.

Only such slates train the ranker (a query needs a positive: `scoring_app.training`), and they are a few in a
hundred, so the rest are not materialized. A run reads time slices of slates after its cursor
(`MaterializationCursor`), each slice's reactions from the log's index of attributed events, and advances the
cursor with the rows it writes, within a time budget: no run reads the whole history, however long the log.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from graph_app.features.definitions import FEATURE_NAMES
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.models import FeatureRow, MaterializationCursor
from graph_app.state.log_reads import impressions_oldest, impressions_without_feature_rows
from graph_app.state.log_reads import slice_reactions as log_slice_reactions
from graph_app.state.models import Event

logger = logging.getLogger(__name__)

# Clicks and purchases may come a while after the slate was shown: an impression waits this long for its labels.
LABEL_WINDOW = timedelta(minutes=30)
REACTIONS = ("click", "add_to_cart", "purchase")
# Slates served within this much of each other are materialized together (one transaction, one cursor step).
SLICE = timedelta(minutes=10)
# A run stops starting slices after this long; the next one continues from the cursor.
MATERIALIZE_TIME_BUDGET_SECONDS = 60.0
# A reaction's time is the client's clock, which may run a little behind ours.
CLOCK_SKEW = timedelta(minutes=5)
CURSOR_ID = 1
# Training rows older than the impression log's retention are deleted, this many a run at most.
FEATURE_ROWS_PRUNED_PER_RUN = 100_000


@dataclass(frozen=True)
class MaterializeReport:
    rows: int
    clicked: int
    purchased: int
    slices: int = 0
    pruned: int = 0


def features_materialize(
    *,
    label_window: timedelta = LABEL_WINDOW,
    time_budget_seconds: float = MATERIALIZE_TIME_BUDGET_SECONDS,
    now: datetime | None = None,
) -> MaterializeReport:
    """Materialize the reacted slates whose label window has closed, slice by slice from the cursor (idempotent:
    a slate already materialized is skipped). A run that finds the cursor locked by another returns at once."""
    now = now or timezone.now()
    cutoff = now - label_window
    started = time.monotonic()
    rows = clicked = purchased = slices = 0
    while True:
        with transaction.atomic():
            cursor = _cursor_lock(now)
            if cursor is None or cursor.served_before >= cutoff:
                break
            end = min(cursor.served_before + SLICE, cutoff)
            written = _slice_materialize(cursor.served_before, end, label_window)
            cursor.served_before = end
            cursor.save(update_fields=["served_before"])
        rows, clicked, purchased = rows + written[0], clicked + written[1], purchased + written[2]
        slices += 1
        if time.monotonic() - started > time_budget_seconds:
            break
    report = MaterializeReport(rows, clicked, purchased, slices, _feature_rows_prune(now))
    logger.info("graph.features_materialized", extra=report.__dict__)
    return report


def _cursor_lock(now: datetime) -> MaterializationCursor | None:
    """The cursor, locked for this transaction; None when another run holds it. Made on the first run, at the oldest
    impression kept (or now, with none)."""
    locked = MaterializationCursor.objects.select_for_update(skip_locked=True).filter(pk=CURSOR_ID)
    cursor = locked.first()
    if cursor is None and not MaterializationCursor.objects.filter(pk=CURSOR_ID).exists():
        oldest = impressions_oldest()
        MaterializationCursor.objects.get_or_create(pk=CURSOR_ID, defaults={"served_before": oldest or now})
        cursor = locked.first()
    return cursor


def slice_reactions(start: datetime, end: datetime, label_window: timedelta) -> QuerySet[Event, tuple[str, str, str]]:
    """(request id, item id, type) of the reactions attributed to slates served in [start, end) within their label
    window (`graph_app.state.log_reads.slice_reactions`)."""
    return log_slice_reactions(start, end, label_window, reactions=REACTIONS, clock_skew=CLOCK_SKEW)


def _slice_materialize(start: datetime, end: datetime, label_window: timedelta) -> tuple[int, int, int]:
    """Rows for the slates served in [start, end) that got a reaction within the label window; (rows, clicked,
    purchased)."""
    outcomes: dict[tuple[str, str], set[str]] = {}
    for request_id, item_id, type_name in slice_reactions(start, end, label_window):
        outcomes.setdefault((request_id, item_id), set()).add(type_name)
    request_ids = {request_id for request_id, _ in outcomes}
    if not request_ids:
        return 0, 0, 0
    pending = impressions_without_feature_rows(request_ids=request_ids, start=start, end=end)
    if not pending:
        return 0, 0, 0
    values = features_offline(
        requests=[
            FeatureRequest(row["user_key"], row["item_id"], row["placement"], row["served_at"]) for row in pending
        ]
    )
    rows = []
    for row, features in zip(pending, values, strict=True):
        happened = outcomes.get((row["request_id"], row["item_id"]), set())
        rows.append(
            FeatureRow(
                **row,
                features=[None if math.isnan(value) else float(value) for value in features],
                feature_names=list(FEATURE_NAMES),
                clicked="click" in happened or "purchase" in happened or "add_to_cart" in happened,
                purchased="purchase" in happened,
            )
        )
    FeatureRow.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return len(rows), sum(row.clicked for row in rows), sum(row.purchased for row in rows)


def _feature_rows_prune(now: datetime) -> int:
    """Training rows of slates older than the impression log keeps (IMPRESSION_LOG_RETENTION_DAYS; 0 keeps all)."""
    if settings.IMPRESSION_LOG_RETENTION_DAYS <= 0:
        return 0
    horizon = now - timedelta(days=settings.IMPRESSION_LOG_RETENTION_DAYS)
    old = list(
        FeatureRow.objects.filter(served_at__lt=horizon).values_list("pk", flat=True)[:FEATURE_ROWS_PRUNED_PER_RUN]
    )
    return FeatureRow.objects.filter(pk__in=old).delete()[0] if old else 0
