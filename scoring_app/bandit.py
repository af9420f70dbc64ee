"""Online learning of the contextual bandit from rewards (control plane; the bandit itself is in
`scoring_app.engine.bandit`).

Every minute the impressions the bandit chose are fed back to it: as soon as an attributed click, add to cart or
purchase arrives, or with no reaction once the label window has closed. Each becomes a VW ADF example against the
alternatives the bandit had for that slot (its decision's offered actions minus the items it picked for earlier
slots), with the logged propensity; the updated model is published to the registry and serving swaps to it.

Costs (VW minimises cost, so a reward is negative): purchase -1.0, add to cart -0.5, click -0.3, no reaction 0.
They follow the value of each outcome to the shop, roughly in the proportions of a usual funnel: a click is worth
something, but optimising clicks alone would favour clickbait over what sells. An impression takes its strongest
reaction; each impression is fed once (the impression log records the cost it was fed), so a later, stronger
reaction to an impression already fed is not learned: the price of learning from clicks within a minute.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from graph_app.interface import LABEL_WINDOW, model_artifact, model_version_active, model_version_publish
from graph_app.state.interface import (
    bandit_costs_record,
    bandit_decisions_prune,
    bandit_decisions_read,
    bandit_impressions_pending,
    bandit_reactions,
    bandit_slots_picked,
)
from scoring_app.engine.bandit import (
    BANDIT,
    bandit_example,
    bandit_model_dump,
    bandit_model_load,
    bandit_model_new,
    bandit_pmf,
)

logger = logging.getLogger(__name__)

BANDIT_LEARN_BATCH_SIZE = 5000
REACTION_COSTS = {"purchase": -1.0, "add_to_cart": -0.5, "click": -0.3}
NO_REACTION_COST = 0.0
# Decisions are kept as long as the attribution window's default (SIGNALS_ATTRIBUTION_WINDOW_SECONDS, 7 days); an
# impression not fed by then is not learned.
DECISION_RETENTION = timedelta(days=7)
DECISIONS_PRUNED_PER_RUN = 10_000
# Reactions carry the client's clock, which may run a little behind ours.
CLOCK_SKEW = timedelta(minutes=5)
# One learner at a time: two would each extend the same model and one's update would be lost.
LEARN_LOCK_ID = 0x62616E64


@dataclass(frozen=True)
class BanditLearnReport:
    learned: int
    rewarded: int
    unlearnable: int  # fed but without their decision (pruned, or never logged): recorded, not learned
    version: str | None  # the version published, if any
    busy: bool = False  # another learner held the lock: nothing done


def _model_active() -> tuple[Any, str]:
    """The active bandit to extend, or a new one when none was published yet."""
    active = model_version_active(kind=BANDIT)
    if active is None:
        return bandit_model_new(), ""
    return bandit_model_load(model_artifact(version=active.version)), active.version


def _reaction_costs(request_ids: set[str], since: datetime) -> dict[tuple[str, str], float]:
    costs: dict[tuple[str, str], float] = {}
    reactions = bandit_reactions(request_ids=request_ids, reaction_types=REACTION_COSTS, since=since - CLOCK_SKEW)
    for request_id, item_id, type_name in reactions:
        key = (request_id, item_id)
        costs[key] = min(costs.get(key, NO_REACTION_COST), REACTION_COSTS[type_name])
    return costs


def bandit_learn(
    *, batch_size: int = BANDIT_LEARN_BATCH_SIZE, label_window: timedelta = LABEL_WINDOW
) -> BanditLearnReport:
    """Feed the bandit the outcomes of up to batch_size of its impressions, publish the updated model (idempotent:
    an impression is fed once). Publishes a first, untrained model when none exists."""
    now = timezone.now()
    horizon = now - DECISION_RETENTION
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LEARN_LOCK_ID])
            if not cursor.fetchone()[0]:
                return BanditLearnReport(0, 0, 0, None, busy=True)
        pending = bandit_impressions_pending(
            since=horizon,
            labelled_before=now - label_window,
            reaction_types=REACTION_COSTS,
            clock_skew=CLOCK_SKEW,
            limit=batch_size,
        )
        workspace, base_version = _model_active()
        try:
            report = _learn(workspace, pending, base_version)
        finally:
            workspace.finish()
        _decisions_prune(horizon)
    # Beat runs it every minute: a run that fed and published nothing is not worth a line at INFO.
    did_something = report.learned or report.rewarded or report.unlearnable or report.version
    logger.log(logging.INFO if did_something else logging.DEBUG, "score.bandit_learned", extra=report.__dict__)
    return report


def _learn(workspace: Any, pending: list[dict[str, Any]], base_version: str) -> BanditLearnReport:
    request_ids = {row["request_id"] for row in pending}
    # A slate's impressions share its serving time: bounding it lets PostgreSQL read only the impression log's
    # partitions (one a day) of the days these were served, not every day kept.
    oldest = min((row["served_at"] for row in pending), default=timezone.now())
    costs = _reaction_costs(request_ids, oldest)
    picked: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for request_id, slot, item_id in bandit_slots_picked(request_ids=request_ids, since=oldest):
        picked[request_id].append((slot, item_id))
    decisions = bandit_decisions_read(request_ids=request_ids)

    fed: dict[float, list[int]] = defaultdict(list)
    learned = rewarded = unlearnable = 0
    ips_cost = logged_cost = 0.0
    for row in pending:
        cost = costs.get((row["request_id"], row["item_id"]), NO_REACTION_COST)
        fed[cost].append(row["pk"])
        decision = decisions.get(row["request_id"])
        # The slot's alternatives: what the bandit was offered, minus what it had picked for the earlier slots.
        earlier = {item_id for slot, item_id in picked[row["request_id"]] if slot < row["slot"]}
        actions = [features for item_id, features in decision[1] if item_id not in earlier] if decision else []
        item_ids = [item_id for item_id, _ in decision[1] if item_id not in earlier] if decision else []
        if row["item_id"] not in item_ids:
            unlearnable += 1
            continue
        chosen = item_ids.index(row["item_id"])
        # Progressive validation: the model's own probability for the logged action before it learns from it
        # gives an inverse-propensity estimate of the cost of the policy being learned.
        ips_cost += cost * bandit_pmf(workspace, decision[0], actions)[chosen] / row["propensity"]
        logged_cost += cost
        workspace.learn(
            bandit_example(shared=decision[0], actions=actions, chosen=chosen, cost=cost, propensity=row["propensity"])
        )
        learned += 1
        rewarded += cost < NO_REACTION_COST

    version = None
    if learned or not base_version:
        metrics: dict[str, object] = {
            "examples": learned,
            "rewarded": rewarded,
            "logged_cost": round(logged_cost / learned, 6) if learned else None,
            "ips_cost": round(ips_cost / learned, 6) if learned else None,
            "learned_from": base_version or None,
        }
        version = model_version_publish(kind=BANDIT, artifact=bandit_model_dump(workspace), metrics=metrics).version
    bandit_costs_record(costs=fed, since=oldest)
    return BanditLearnReport(learned, rewarded, unlearnable, version)


def _decisions_prune(horizon: datetime) -> int:
    return bandit_decisions_prune(before=horizon, limit=DECISIONS_PRUNED_PER_RUN)
