"""A shopper's rows of the logs (control plane): found, then deleted by `signals_app.erasure` under its erasure
lock (the caller's transaction)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet

from graph_app.state.models import BanditDecision, Event, EventId, Impression, RankerSlate


@dataclass
class ShopperLogTrace:
    """What the logs hold of a shopper: the sessions its events came with, the slates it was served and where."""

    event_session_ids: set[str] = field(default_factory=set)
    request_ids: set[str] = field(default_factory=set)
    placements: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class ShopperLogsErased:
    events: int
    impressions: int
    bandit_decisions: int
    # The ranker's logged pools of its slates (their feature rows hold the shopper's user x item features).
    ranker_slates: int = 0


def _events(user_id: str, session_ids: Collection[str]) -> QuerySet[Event]:
    """The user's events and its linked sessions' anonymous ones (the parent table: every partition)."""
    return Event.objects.filter(Q(user_id=user_id) | Q(user_id="", session_id__in=sorted(session_ids)))


def shopper_log_trace(*, user_id: str, session_ids: Collection[str], user_keys: Collection[str]) -> ShopperLogTrace:
    trace = ShopperLogTrace()
    events = _events(user_id, session_ids).exclude(user_id="").exclude(session_id="")
    trace.event_session_ids = set(events.values_list("session_id", flat=True).distinct())
    for request_id, placement in Impression.objects.filter(user_key__in=user_keys).values_list(
        "request_id", "placement"
    ):
        trace.request_ids.add(request_id)
        trace.placements.add(placement)
    return trace


def shopper_logs_erase(
    *, user_id: str, session_ids: Collection[str], user_keys: Collection[str], request_ids: Collection[str]
) -> ShopperLogsErased:
    """The shopper's events (and their ids), impressions, and the bandit's decisions and the ranker's logged pools
    of its slates (`request_ids` and those of its impressions), deleted."""
    events = _events(user_id, session_ids)
    event_ids = list(events.values_list("event_id", flat=True))
    erased_events, _ = events.delete()
    EventId.objects.filter(event_id__in=event_ids).delete()
    keys = sorted(user_keys)
    served = set(Impression.objects.filter(user_key__in=keys).values_list("request_id", flat=True))
    impressions, _ = Impression.objects.filter(user_key__in=keys).delete()
    slates = sorted(served | set(request_ids))
    decisions, _ = BanditDecision.objects.filter(request_id__in=slates).delete()
    pools, _ = RankerSlate.objects.filter(request_id__in=slates).delete()
    return ShopperLogsErased(
        events=erased_events, impressions=impressions, bandit_decisions=decisions, ranker_slates=pools
    )
