"""Event ingest: validate, resolve identities, then one Redis round trip that deduplicates, updates the online
state and appends to the stream the durable log is written from. No PostgreSQL on this path."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from graph_app.state.interface import EventInput, EventOutcome, OnlineEvent, event_type_lookup, events_ingest_online
from personalization import redis_keys
from personalization.errors import ApplicationError
from personalization.exception_handler import SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS
from personalization.process_caches import process_cache
from personalization.redis_client import ReplicasWait, get_control_redis, get_ingest_redis
from signals_app import metrics
from signals_app.identity import identity_link_if_new
from signals_app.models import DeadLetter
from signals_app.validation import event_validate

logger = logging.getLogger(__name__)

EVENT_BATCH_MAX = 500
LINKED_SESSIONS_REMEMBERED = 100_000
EVENT_BODY_MAX_BYTES = 1024 * 1024


_linked_sessions: OrderedDict[tuple[str, str], None] = OrderedDict()


@process_cache("signal.linked_sessions")
def _linked_sessions_forget() -> None:
    _linked_sessions.clear()


@dataclass
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    accepted_events: list[EventInput] = field(default_factory=list)


@dataclass
class ValidatedEvents:
    """The valid events, first occurrence of each event id, with their indexes in the request."""

    events: list[OnlineEvent] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)
    # index of a repeated event id -> index of its first occurrence
    repeats: dict[int, int] = field(default_factory=dict)


def events_validate(
    *, raw_events: list[Any], report: IngestReport, now: datetime, backfill: bool = False
) -> ValidatedEvents:
    """The valid events, first occurrence of each event id; every rejected one is reported by index and field."""
    valid = ValidatedEvents()
    first_index: dict[str, int] = {}
    for index, raw in enumerate(raw_events):
        result = event_validate(raw, now=now)
        if isinstance(result, list):
            report.rejected += 1
            for field_name, message in result:
                report.errors.append({"index": index, "field": field_name, "message": message})
            metrics.events_counted(raw.get("type") if isinstance(raw, dict) else None, "rejected")
            continue
        if result.event_id in first_index:
            report.duplicates += 1
            valid.repeats[index] = first_index[result.event_id]
            metrics.events_counted(result.type, "duplicate")
            continue
        first_index[result.event_id] = index
        event_type = event_type_lookup(result.type)
        assert event_type is not None  # validation checked it
        valid.events.append(OnlineEvent(result, event_type, now, backfill))
        valid.indexes.append(index)
    return valid


class IngestIncomplete(ApplicationError):
    """Redis failed part way: a 503 whose body says, by index in the request, which events were applied (new or
    already seen), which were not, and which may have been (a reply that never came: resending them is safe, their
    event ids make a second copy a duplicate)."""

    def __init__(self, *, applied: list[int], not_applied: list[int], unknown: list[int]) -> None:
        detail = (
            "A backing store is unavailable; retry shortly. "
            f"{len(applied)} events were applied, {len(not_applied)} were not, {len(unknown)} may have been."
        )
        super().__init__(
            detail,
            code="service_unavailable",
            status_code=503,
            extra={"applied": applied, "not_applied": not_applied, "unknown": unknown},
            headers={"Retry-After": str(SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
        self.applied, self.not_applied, self.unknown = applied, not_applied, unknown


def _incomplete(raw_count: int, valid: ValidatedEvents, outcomes: list[EventOutcome]) -> IngestIncomplete:
    by_index = dict(zip(valid.indexes, outcomes, strict=True))
    by_index.update({repeat: by_index[first] for repeat, first in valid.repeats.items()})
    applied, not_applied, unknown = [], [], []
    for index in range(raw_count):
        outcome = by_index.get(index, EventOutcome.NOT_APPLIED)  # a rejected event was not applied
        if outcome.applied:
            applied.append(index)
        elif outcome is EventOutcome.UNKNOWN:
            unknown.append(index)
        else:
            not_applied.append(index)
    return IngestIncomplete(applied=applied, not_applied=not_applied, unknown=unknown)


def _resolve_sessions(events: list[OnlineEvent], client: redis.Redis) -> list[OnlineEvent]:
    """Events sent under a session that was identified count for its user (one extra round trip, only for
    batches that have session-only events)."""
    anonymous = [online for online in events if not online.event.user_id]
    if not anonymous:
        return events
    sessions = sorted({online.event.session_id for online in anonymous})
    pipeline = client.pipeline(transaction=False)
    for session_id in sessions:
        pipeline.get(redis_keys.session_alias(session_id))
    owners = {session: owner.decode() for session, owner in zip(sessions, pipeline.execute(), strict=True) if owner}
    if not owners:
        return events
    return [
        dataclasses.replace(online, event=dataclasses.replace(online.event, user_id=owners[online.event.session_id]))
        if not online.event.user_id and online.event.session_id in owners
        else online
        for online in events
    ]


UsersChanged = Callable[[redis.client.Pipeline, set[str]], None]


def events_ingest(
    *, raw_events: list[Any], backfill: bool = False, on_users_changed: UsersChanged | None = None
) -> IngestReport:
    """backfill: the events are history being loaded in bulk, so even old ones update the online state.
    on_users_changed: queues more commands (e.g. live shelf refreshes) on the ingest's own Redis pipeline.
    A storefront's request uses ingest's Redis client (a hung Redis answers 503 within its 2 s socket timeout); a
    back-fill is control plane and may wait longer. Raises IngestIncomplete when Redis failed part way: the events
    the report would count as accepted or duplicates were applied, the error says which."""
    started = time.perf_counter()
    report = IngestReport()
    valid = events_validate(raw_events=raw_events, report=report, now=datetime.now(UTC), backfill=backfill)
    if valid.events:
        client = get_control_redis() if backfill else get_ingest_redis()
        try:
            # Only reads and identity links before the script: a failure here applied none of the events.
            valid.events = _resolve_sessions(valid.events, client)
            _link_sessions_seen_with_users([online.event for online in valid.events])
        except redis.RedisError as error:
            raise _incomplete(len(raw_events), valid, [EventOutcome.NOT_APPLIED] * len(valid.events)) from error
        user_keys = {online.event.user_key for online in valid.events}
        also = (lambda pipeline: on_users_changed(pipeline, user_keys)) if on_users_changed else None
        replicas_wait = _replicas_wait()
        outcomes = events_ingest_online(client=client, events=valid.events, also=also, replicas_wait=replicas_wait)
        if replicas_wait is not None and replicas_wait.short:
            # Still acknowledged: the events are on their master, and lost only if it dies before replicating them.
            metrics.replicas_short_counted(replicas_wait.short)
        for online, outcome in zip(valid.events, outcomes, strict=True):
            if outcome is EventOutcome.NEW:
                report.accepted += 1
                report.accepted_events.append(online.event)
            elif outcome is EventOutcome.DUPLICATE:
                report.duplicates += 1
            if outcome.applied:
                metrics.events_counted(online.event.type, "accepted" if outcome is EventOutcome.NEW else "duplicate")
        if not all(outcome.applied for outcome in outcomes):
            raise _incomplete(len(raw_events), valid, outcomes)
    metrics.ingest_observed(time.perf_counter() - started)
    return report


def _replicas_wait() -> ReplicasWait | None:
    """On a Redis Cluster, an event is acknowledged once a replica has it too (REDIS_INGEST_REPLICAS_WAIT, 0 on a
    single node, where `ReplicasWait` asks nothing anyway)."""
    if settings.REDIS_INGEST_REPLICAS_WAIT <= 0:
        return None
    return ReplicasWait(replicas=settings.REDIS_INGEST_REPLICAS_WAIT, timeout_ms=settings.REDIS_INGEST_WAIT_TIMEOUT_MS)


def _link_sessions_seen_with_users(events: list[EventInput]) -> None:
    """An event that carries both a user and a session identifies that session, like the identify call. The
    session's history is merged before the event is applied, so the event stays the newest. Storefronts send
    both ids on every event after a login: the links this process already made are remembered, so this costs a
    round trip only once per session."""
    pairs = {
        (event.user_id, event.session_id)
        for event in events
        if event.user_id and event.session_id and (event.user_id, event.session_id) not in _linked_sessions
    }
    for user_id, session_id in sorted(pairs):
        identity_link_if_new(user_id=user_id, session_id=session_id)
        _linked_sessions[(user_id, session_id)] = None
        if len(_linked_sessions) > LINKED_SESSIONS_REMEMBERED:
            _linked_sessions.popitem(last=False)


def dead_letters_replay(*, dead_letter_ids: Iterable[int]) -> int:
    """Put dead-lettered entries back on their streams, for the consumer to store as if they had just arrived (the
    admin's "Replay" action). Idempotent: a dead letter is replayed once (`replayed_at`), and an event stored twice
    is one row, the log being unique on event id. Returns how many were put back."""
    with transaction.atomic():
        rows = list(
            DeadLetter.objects.select_for_update().filter(pk__in=list(dead_letter_ids), replayed_at__isnull=True)
        )
        if not rows:
            return 0
        pipeline = get_control_redis().pipeline(transaction=False)
        for row in rows:
            pipeline.xadd(row.stream, {"e": row.payload.encode(), "replayed_from": row.entry_id})
        pipeline.execute()
        DeadLetter.objects.filter(pk__in=[row.pk for row in rows]).update(replayed_at=timezone.now())
    logger.info("signals.dead_letters_replayed", extra={"dead_letters": len(rows)})
    return len(rows)
