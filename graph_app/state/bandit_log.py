"""What the bandit's learning reads and writes of the logs (control plane): its impressions not fed yet, the
reactions attributed to them, the decisions it logged, and the cost each impression was fed."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Exists, OuterRef, Q

from graph_app.state.models import BanditDecision, Event, Impression


def bandit_impressions_pending(
    *,
    since: datetime,
    labelled_before: datetime,
    reaction_types: Collection[str],
    clock_skew: timedelta,
    limit: int,
) -> list[dict[str, Any]]:
    """The bandit's impressions served since `since` and not fed yet whose label is known (served before
    `labelled_before`, or reacted to), oldest first: pk, request_id, item_id, slot, propensity, served_at."""
    reacted = Event.objects.filter(
        request_id=OuterRef("request_id"),
        item_id=OuterRef("item_id"),
        type__in=list(reaction_types),
        occurred_at__gte=OuterRef("served_at") - clock_skew,
    )
    rows = (
        Impression.objects.filter(propensity__isnull=False, bandit_cost__isnull=True, served_at__gte=since)
        .filter(Q(served_at__lte=labelled_before) | Exists(reacted))
        .order_by("served_at", "request_id", "slot")
        .values("pk", "request_id", "item_id", "slot", "propensity", "served_at")[:limit]
    )
    return [dict(row) for row in rows]


def bandit_reactions(
    *, request_ids: Collection[str], reaction_types: Collection[str], since: datetime
) -> list[tuple[str, str, str]]:
    """(request id, item id, event type) of the reactions to these slates that happened since `since`."""
    return list(
        Event.objects.filter(
            request_id__in=request_ids, type__in=list(reaction_types), occurred_at__gte=since
        ).values_list("request_id", "item_id", "type")
    )


def bandit_slots_picked(*, request_ids: Collection[str], since: datetime) -> list[tuple[str, int, str]]:
    """(request id, slot, item id) of what the bandit picked in these slates (served since `since`)."""
    return list(
        Impression.objects.filter(
            request_id__in=request_ids, propensity__isnull=False, served_at__gte=since
        ).values_list("request_id", "slot", "item_id")
    )


def bandit_decisions_read(*, request_ids: Collection[str]) -> dict[str, tuple[str, list[Any]]]:
    """request id -> (shared features, [[item id, features], ...] offered) of these slates' decisions."""
    rows = BanditDecision.objects.filter(request_id__in=request_ids).values_list("request_id", "shared", "actions")
    return {request_id: (shared, actions) for request_id, shared, actions in rows}


def bandit_costs_record(*, costs: Mapping[float, list[int]], since: datetime) -> None:
    """The cost each impression (by pk, served since `since`) was fed: it is not fed again."""
    for cost, pks in costs.items():
        Impression.objects.filter(pk__in=pks, served_at__gte=since).update(bandit_cost=cost)


def bandit_decisions_prune(*, before: datetime, limit: int) -> int:
    """Up to `limit` decisions served before `before` deleted; how many."""
    old = list(BanditDecision.objects.filter(served_at__lt=before).values_list("pk", flat=True)[:limit])
    return BanditDecision.objects.filter(pk__in=old).delete()[0] if old else 0
