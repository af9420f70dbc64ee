"""Training-serving skew check: the online and offline materializations of the same features, for sampled users
and items at the same instant, must agree within float tolerance."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from django.db import connection

from graph_app.features.definitions import FEATURE_NAMES
from graph_app.features.offline import FeatureRequest, features_offline
from graph_app.features.online import features_fetch
from graph_app.state.log_reads import logged_users_sample, user_items_logged

# Relative. The online affinity counters are floats (about 6e-8 of rounding an event, `user_affinity`): a user's
# hundreds of events stay well within it; a definition that differs does not.
DEFAULT_TOLERANCE = 1e-5


@dataclass
class FeatureSkew:
    name: str
    compared: int = 0
    mismatched: int = 0
    max_difference: float = 0.0
    examples: list[str] = field(default_factory=list)


@dataclass
class SkewReport:
    users: int
    rows: int
    tolerance: float
    features: dict[str, FeatureSkew]

    @property
    def mismatched(self) -> int:
        return sum(feature.mismatched for feature in self.features.values())


def _sample(users: int, items_per_user: int, seed: str) -> dict[str, list[str]]:
    """Users with history, each with their own latest items and catalog items they never touched."""
    with connection.cursor() as cursor:
        user_ids = logged_users_sample(users=users, seed=seed)
        cursor.execute(
            "SELECT external_id FROM graph_app_item ORDER BY md5(external_id || %s) LIMIT %s",
            [seed, items_per_user * 4],
        )
        catalog = [row[0] for row in cursor.fetchall()]
        sample: dict[str, list[str]] = {}
        for user_id in user_ids:
            own = user_items_logged(user_id=user_id, limit=items_per_user // 2)
            others = [item for item in catalog if item not in own][: items_per_user - len(own)]
            sample[user_id] = own + others
    return sample


def feature_skew_check(
    *, users: int = 25, items_per_user: int = 20, placement: str = "default", tolerance: float = DEFAULT_TOLERANCE,
    seed: str = "skew",
) -> SkewReport:  # fmt: skip
    sample = _sample(users, items_per_user, seed)
    now = time.time()
    as_of = datetime.fromtimestamp(now, tz=UTC)
    requests: list[FeatureRequest] = []
    online_rows: list[np.ndarray] = []
    for user_id, item_ids in sample.items():
        matrix = features_fetch(user_key=user_id, item_ids=item_ids, placement=placement, now=now)
        online_rows.append(matrix.values)
        requests += [FeatureRequest(user_id, item_id, placement, as_of) for item_id in item_ids]
    online = np.vstack(online_rows) if online_rows else np.zeros((0, len(FEATURE_NAMES)))
    offline = features_offline(requests=requests)

    features = {name: FeatureSkew(name) for name in FEATURE_NAMES}
    labels = [f"{request.user_key}/{request.item_id}" for request in requests]
    for column, name in enumerate(FEATURE_NAMES):
        skew_compare(features[name], online[:, column], offline[:, column], labels, tolerance)
    return SkewReport(users=len(sample), rows=len(requests), tolerance=tolerance, features=features)


def skew_compare(
    skew: FeatureSkew, online: np.ndarray, offline: np.ndarray, labels: list[str], tolerance: float
) -> None:
    """Count one feature's rows that differ beyond the relative tolerance (missing on one side only differs)."""
    for left, right, label in zip(online.tolist(), offline.tolist(), labels, strict=True):
        skew.compared += 1
        if math.isnan(left) and math.isnan(right):
            continue
        difference = abs(left - right) if not (math.isnan(left) or math.isnan(right)) else math.inf
        if difference > tolerance * max(1.0, abs(right) if not math.isnan(right) else 1.0):
            skew.mismatched += 1
            if len(skew.examples) < 3:
                skew.examples.append(f"{label}: online {left!r}, offline {right!r}")
        if not math.isinf(difference):
            skew.max_difference = max(skew.max_difference, difference)
