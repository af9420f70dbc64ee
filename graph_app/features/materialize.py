"""Scheduled offline materialization: every served impression becomes a training row, with the features the
offline store computes as of the moment it was served (point in time: nothing the shopper did afterwards leaks
in) and the labels of what followed (a click or purchase attributed to that slate within the window)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from graph_app.features.definitions import FEATURE_NAMES
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.models import FeatureRow
from signals_app.models import Event, Impression

logger = logging.getLogger(__name__)

# Clicks and purchases may come a while after the slate was shown: an impression waits this long for its labels.
LABEL_WINDOW = timedelta(minutes=30)
MATERIALIZE_BATCH_SIZE = 2000


@dataclass(frozen=True)
class MaterializeReport:
    rows: int
    clicked: int
    purchased: int


def features_materialize(
    *, batch_size: int = MATERIALIZE_BATCH_SIZE, label_window: timedelta = LABEL_WINDOW
) -> MaterializeReport:
    """Materialize the impressions whose label window has closed and that have no row yet (idempotent)."""
    cutoff = timezone.now() - label_window
    done = FeatureRow.objects.filter(request_id=OuterRef("request_id"), slot=OuterRef("slot"))
    pending = list(
        Impression.objects.filter(served_at__lte=cutoff)
        .exclude(Exists(done))
        .order_by("served_at")
        .values("request_id", "slot", "user_key", "item_id", "placement", "served_at", "model_version")[:batch_size]
    )
    if not pending:
        return MaterializeReport(0, 0, 0)
    request_ids = {row["request_id"] for row in pending}
    outcomes: dict[tuple[str, str], set[str]] = {}
    for request_id, item_id, type_name in Event.objects.filter(
        request_id__in=request_ids, type__in=("click", "add_to_cart", "purchase")
    ).values_list("request_id", "item_id", "type"):
        outcomes.setdefault((request_id, item_id), set()).add(type_name)
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
    with transaction.atomic():
        FeatureRow.objects.bulk_create(rows, ignore_conflicts=True)
    report = MaterializeReport(len(rows), sum(row.clicked for row in rows), sum(row.purchased for row in rows))
    logger.info("graph.features_materialized", extra=report.__dict__)
    return report
