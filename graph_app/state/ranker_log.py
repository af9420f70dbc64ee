"""The ranker's logged pools in PostgreSQL (control plane): what the stream consumer stores of a ranker slate, what
retention deletes, and what off-policy evaluation reads back (the slates of a placement with each served slot's
reward).

A slate contributes the slots its ranker draw placed, from the first one down to the first that a rule, a pin, a
cap or the bandit's exploration changed: those are slots where the shopper saw what the logging policy chose,
in the order it chose it, so their logged propensities are what served them. A constant shift (context items or a
pin above the draw) keeps them: it moves every draw alike, as it would move the candidate's.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from graph_app.models import Item
from graph_app.state.models import Event, RankerSlate

# Request ids per query when reading the rewards of logged slates (one IN list each).
REWARD_QUERY_CHUNK = 2000
# Rows deleted per statement by retention (a day of slates at once would hold locks and memory for long).
RANKER_SLATES_PRUNE_BATCH = 5000
# The events a reward counts: a click is 1 per slot (clicked or not); revenue sums the purchases' values.
REWARD_EVENT_TYPES = {"click": ("click",), "revenue": ("purchase",)}
# An event may be stamped by a client clock slightly behind the server's that served the slate.
CLOCK_SKEW = timedelta(minutes=5)


def ranker_slate_row(record: dict[str, Any]) -> RankerSlate | None:
    """The logged pool of an impression stream record (`record["ranker_pool"]`), or None when it has none."""
    pool = record.get("ranker_pool")
    if not pool:
        return None
    return RankerSlate(
        request_id=record["request_id"],
        placement=record["placement"],
        served_at=datetime.fromtimestamp(record["served_at"], tz=UTC),
        model_version=record.get("model_version") or "",
        feature_names=list(pool["feature_names"]),
        item_ids=list(pool["item_ids"]),
        features=base64.b64decode(pool["features"]),
        logging_scores=list(pool["logging_scores"]),
        policy=dict(pool["policy"]),
        shown=[list(entry) for entry in pool["shown"]],
    )


def ranker_slates_prune(*, before: datetime, batch: int = RANKER_SLATES_PRUNE_BATCH) -> int:
    """Every logged pool served before `before` deleted, `batch` rows a statement; how many."""
    deleted = 0
    while True:
        old = list(RankerSlate.objects.filter(served_at__lt=before).values_list("pk", flat=True)[:batch])
        if not old:
            return deleted
        deleted += RankerSlate.objects.filter(pk__in=old).delete()[0]


@dataclass(frozen=True)
class RankerSlateLogged:
    """A logged ranker slate as off-policy evaluation reads it: the pool (its items best first, their feature rows
    named by `feature_names`, the serving ranker's scores), the logging policy, and the evaluable slots: the pool
    rows shown in draw-slot order from slot 0, their logged propensities and rewards."""

    request_id: str
    served_at: datetime
    model_version: str
    feature_names: tuple[str, ...]
    item_ids: list[str]
    pool_features: np.ndarray  # (N, F) float64, NaN where missing
    logging_scores: np.ndarray  # (N,)
    policy: dict[str, float]
    shown: np.ndarray  # (k,) pool rows, in slot order
    propensities: np.ndarray  # (k,)
    rewards: np.ndarray  # (k,)


def evaluable_slots(shown: Sequence[Sequence[float]]) -> list[tuple[int, float, int]]:
    """(pool row, propensity, served slot) of the draw's slots 0, 1, ... as long as each was served right after
    the previous one (a slot a rule, pin, cap or the bandit changed ends the slate's evaluable part)."""
    by_draw_slot = {
        int(draw_slot): (int(row), int(served), float(propensity)) for row, draw_slot, served, propensity in shown
    }
    slots: list[tuple[int, float, int]] = []
    for draw_slot in range(len(by_draw_slot)):
        entry = by_draw_slot.get(draw_slot)
        if entry is None or (slots and entry[1] != slots[-1][2] + 1):
            break
        slots.append((entry[0], entry[2], entry[1]))
    return slots


def ranker_slates_logged(
    *, placement: str, since: datetime, until: datetime, max_slates: int, reward: str = "click"
) -> list[RankerSlateLogged]:
    """The placement's logged ranker slates served in [since, until), the most recent first and at most
    `max_slates` (memory: about 3 KB each), with each evaluable slot's reward: 1.0 when the shopper clicked the
    item from that slate (reward "click"), or the value of the purchases attributed to it ("revenue": a purchase
    without a value counts the item's price)."""
    if reward not in REWARD_EVENT_TYPES:
        raise ValueError(f"reward must be one of {sorted(REWARD_EVENT_TYPES)}")
    rows = list(
        RankerSlate.objects.filter(placement=placement, served_at__gte=since, served_at__lt=until)
        .order_by("-served_at")
        .values_list(
            "request_id", "served_at", "model_version", "feature_names", "item_ids", "features", "logging_scores",
            "policy", "shown",
        )[:max_slates]
    )  # fmt: skip
    if not rows:
        return []
    outcomes = _slot_outcomes(
        request_ids=[row[0] for row in rows], since=min(row[1] for row in rows) - CLOCK_SKEW, reward=reward
    )
    slates = []
    for request_id, served_at, model_version, names, item_ids, features, scores, policy, shown in rows:
        slots = evaluable_slots(shown)
        if not slots:
            continue
        matrix = np.frombuffer(bytes(features), dtype="<f4").reshape(len(item_ids), len(names)).astype(np.float64)
        slates.append(
            RankerSlateLogged(
                request_id=request_id,
                served_at=served_at,
                model_version=model_version,
                feature_names=tuple(names),
                item_ids=list(item_ids),
                pool_features=matrix,
                logging_scores=np.asarray(scores, dtype=np.float64),
                policy=dict(policy),
                shown=np.array([row for row, _, _ in slots], dtype=np.int64),
                propensities=np.array([propensity for _, propensity, _ in slots], dtype=np.float64),
                rewards=np.array(
                    [outcomes.get((request_id, item_ids[row]), 0.0) for row, _, _ in slots], dtype=np.float64
                ),
            )
        )
    return slates


def _slot_outcomes(*, request_ids: Collection[str], since: datetime, reward: str) -> dict[tuple[str, str], float]:
    """(request id, item id) -> reward of the events attributed to these slates since `since`. A purchase without
    a value counts its item's catalog price, as the dashboard's revenue does."""
    types = list(REWARD_EVENT_TYPES[reward])
    outcomes: dict[tuple[str, str], float] = {}
    unpriced: list[tuple[tuple[str, str], str]] = []
    ids = list(request_ids)
    for start in range(0, len(ids), REWARD_QUERY_CHUNK):
        events = Event.objects.filter(
            request_id__in=ids[start : start + REWARD_QUERY_CHUNK],
            type__in=types,
            attributed_slot__isnull=False,
            occurred_at__gte=since,
        ).values_list("request_id", "item_id", "value")
        for request_id, item_id, value in events:
            key = (request_id, item_id)
            if reward == "click":
                outcomes[key] = 1.0
            elif value is None:
                unpriced.append((key, item_id))
            else:
                outcomes[key] = outcomes.get(key, 0.0) + float(value)
    if unpriced:
        prices = dict(
            Item.objects.filter(external_id__in={item_id for _, item_id in unpriced}, price__isnull=False).values_list(
                "external_id", "price"
            )
        )
        for key, item_id in unpriced:
            outcomes[key] = outcomes.get(key, 0.0) + float(prices.get(item_id) or 0.0)
    return outcomes
