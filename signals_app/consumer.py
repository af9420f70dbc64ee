"""The durable side of ingest: consumers read the partition streams as a consumer group and write the events to
the PostgreSQL log, acknowledging an entry only after its batch committed.

At-least-once end to end: an entry read by a consumer that died stays pending and is reclaimed by another
after EVENT_RECLAIM_IDLE_MS; the log's unique event id makes the replay harmless. An entry that cannot be
stored (bad data, or a record that fails in any other way) is isolated from its batch and moved to the
partition's dead-letter stream and the DeadLetter table, as is one tried MAX_TRIES times (it kept killing its
consumers). Only PostgreSQL or Redis going away leaves a batch pending, to be retried. Tries are counted by the
consumer (a hash per partition), not as Redis counts deliveries: a batch that found PostgreSQL or Redis away takes
its try back, so an outage never dead-letters an entry. Staff replay dead letters from the admin
(`signals_app.services.dead_letters_replay`).

Late events (older than the dedupe window when they arrived) that a batch stored as new are applied to the online
state after its commit, before the acknowledgement (`graph_app.state.history`: at most once, never twice).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from redis.exceptions import RedisError, ResponseError

from graph_app.state.interface import (
    Attribution,
    EventInput,
    EventRecord,
    event_is_late,
    event_log_append,
    events_apply_online,
    impression_slates_logged,
    impressions_store,
)
from personalization import redis_keys
from personalization.redis_client import get_control_redis
from signals_app.erasure import erased_entry_ids
from signals_app.models import DeadLetter, IdentityLink

logger = logging.getLogger(__name__)

CONSUMER_GROUP = "event-log"
READ_BATCH_SIZE = 500
MAX_TRIES = 5
DRAIN_TIME_BUDGET_SECONDS = 5.0
IDLE_CONSUMER_FORGET_MS = 3600 * 1000
# A test hook: exit abruptly after reading a batch, as a killed worker would (never set in production).
CRASH_AFTER_READ_ENV = "SIGNALS_CONSUMER_CRASH_AFTER_READ"

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class DrainReport:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    identities: int = 0
    impressions: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    # Late events stored as new and then applied to the online state.
    late_applied: int = 0
    # Entries of shoppers erased after they were sent (`signals_app.erasure`), dropped.
    erased: int = 0
    skipped: str = ""
    partitions: list[int] = field(default_factory=list)

    def add(self, other: DrainReport) -> None:
        for name in (
            "read", "stored", "duplicates", "identities", "impressions", "dead_lettered", "reclaimed", "late_applied",
            "erased",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.partitions += other.partitions
        self.skipped = self.skipped or other.skipped


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _group_ensure(stream: str) -> None:
    try:
        get_control_redis().xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _postgres_available() -> bool:
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except (OperationalError, InterfaceError):
        connection.close_if_unusable_or_obsolete()
        return False


def events_drain_all(*, consumer: str | None = None, time_budget: float = DRAIN_TIME_BUDGET_SECONDS) -> DrainReport:
    report = DrainReport()
    for partition in redis_keys.partitions():
        report.add(events_drain(partition=partition, consumer=consumer or consumer_name(), time_budget=time_budget))
        if report.skipped:
            break
    return report


def events_drain(*, partition: int, consumer: str, time_budget: float = DRAIN_TIME_BUDGET_SECONDS) -> DrainReport:
    report = DrainReport(partitions=[partition])
    # Without PostgreSQL nothing can be stored: leave the entries where they are (claiming them would count
    # deliveries against them).
    if not _postgres_available():
        report.skipped = "postgres_unavailable"
        logger.warning("signals.drain_skipped", extra={"reason": report.skipped, "partition": partition})
        return report
    stream = redis_keys.event_stream(partition)
    _group_ensure(stream)
    redis = get_control_redis()
    deadline = time.monotonic() + time_budget

    start = "0-0"
    while time.monotonic() < deadline:
        start, entries, _deleted = redis.xautoclaim(
            stream, CONSUMER_GROUP, consumer, settings.EVENT_RECLAIM_IDLE_MS, start_id=start, count=READ_BATCH_SIZE
        )
        if entries:
            report.reclaimed += len(entries)
            _process(stream, partition, entries, report, reclaimed=True)
        if start in (b"0-0", "0-0"):
            break

    while time.monotonic() < deadline:
        response = redis.xreadgroup(CONSUMER_GROUP, consumer, {stream: ">"}, count=READ_BATCH_SIZE)
        entries = response[0][1] if response else []
        if not entries:
            break
        if os.environ.get(CRASH_AFTER_READ_ENV):
            os._exit(137)
        _process(stream, partition, entries, report, reclaimed=False)

    _trim_acknowledged(stream)
    _forget_idle_consumers(stream)
    return report


def _tries_begin(partition: int, entries: list[Entry]) -> dict[bytes, int]:
    """Count a try of each entry before it is made (a consumer killed by an entry has tried it): the tries made
    before this one, by entry id."""
    pipeline = get_control_redis().pipeline(transaction=False)
    for entry_id, _ in entries:
        pipeline.hincrby(redis_keys.event_tries(partition), entry_id, 1)
    return {entry_id: int(tries) - 1 for (entry_id, _), tries in zip(entries, pipeline.execute(), strict=True)}


def _tries_undo(partition: int, entries: list[Entry]) -> None:
    """The store was away, not the entries at fault: this try does not count."""
    try:
        pipeline = get_control_redis().pipeline(transaction=False)
        for entry_id, _ in entries:
            pipeline.hincrby(redis_keys.event_tries(partition), entry_id, -1)
        pipeline.execute()
    except RedisError:
        logger.warning("signals.tries_not_undone", extra={"partition": partition, "entries": len(entries)})


def _tries_forget(partition: int, entries: list[Entry]) -> None:
    get_control_redis().hdel(redis_keys.event_tries(partition), *[entry_id for entry_id, _ in entries])


def _attributions(events: list[EventInput]) -> dict[str, dict[str, Any]]:
    request_ids = sorted({event.request_id for event in events if event.request_id})
    if not request_ids:
        return {}
    pipeline = get_control_redis().pipeline(transaction=False)
    for request_id in request_ids:
        pipeline.get(redis_keys.slate(request_id))
    slates = {}
    for request_id, payload in zip(request_ids, pipeline.execute(), strict=True):
        if payload:
            slates[request_id] = orjson.loads(payload)
    older = [request_id for request_id in request_ids if request_id not in slates]
    if older:
        slates.update(_logged_slates(older))
    return slates


def _logged_slates(request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Slates served longer ago than Redis keeps them (SURFACE_SLATE_KEEP_SECONDS), rebuilt from the impression
    log, if served within the attribution window."""
    since = datetime.now(UTC) - timedelta(seconds=settings.SIGNALS_ATTRIBUTION_WINDOW_SECONDS)
    return impression_slates_logged(request_ids=request_ids, since=since)


def _attribution(event: EventInput, slates: dict[str, dict[str, Any]]) -> Attribution | None:
    served = slates.get(event.request_id)
    if served is None:
        return None
    shown = next((row for row in served.get("items", []) if row["item_id"] == event.item_id), None)
    return Attribution(
        request_id=event.request_id,
        placement=served.get("placement", ""),
        slot=shown["slot"] if shown else None,
        model_version=served.get("model_version") or "",
        score=shown["score"] if shown else None,
        source=shown["source"] if shown else "",
    )


def _event_from_payload(payload: dict[str, Any]) -> tuple[EventInput, datetime]:
    return (
        EventInput(
            event_id=payload["event_id"],
            type=payload["type"],
            user_id=payload["user_id"],
            session_id=payload["session_id"],
            item_id=payload["item_id"],
            placement=payload["placement"],
            request_id=payload["request_id"],
            slot=payload.get("slot"),
            value=payload["value"],
            context=payload["context"],
            occurred_at=datetime.fromisoformat(payload["occurred_at"]),
        ),
        datetime.fromisoformat(payload["received_at"]),
    )


def _process(stream: str, partition: int, entries: list[Entry], report: DrainReport, *, reclaimed: bool) -> None:
    report.read += len(entries)
    tried = _tries_begin(partition, entries)
    try:
        dead, stored, late = _store(entries, tried)
    except (OperationalError, InterfaceError, RedisError):
        _tries_undo(partition, entries)
        raise  # PostgreSQL or Redis went away: the entries stay pending and are retried
    except Exception as error:
        # Anything else is a bad entry (e.g. a malformed record): store the batch entry by entry, so that only
        # the offenders are dead-lettered and the others are stored and acknowledged now.
        logger.warning("signals.batch_failed_isolating", extra={"error": repr(error), "entries": len(entries)})
        dead, stored, late = [], DrainReport(), []
        for entry in entries:
            try:
                entry_dead, entry_stored, entry_late = _store([entry], tried)
            except (OperationalError, InterfaceError, RedisError):
                _tries_undo(partition, entries)
                raise
            except Exception as entry_error:
                dead.append((entry, f"could not be processed: {entry_error!r}"))
                continue
            dead += entry_dead
            stored.add(entry_stored)
            late += entry_late
    report.add(stored)
    if late:
        # Committed: from here a failure leaves these out of the online state (redelivered, they are duplicates).
        report.late_applied += events_apply_online(records=late)

    if dead:
        _dead_letter(partition, dead, tried)
        report.dead_lettered += len(dead)
    get_control_redis().xack(stream, CONSUMER_GROUP, *[entry_id for entry_id, _ in entries])
    _tries_forget(partition, entries)


def _store(
    entries: list[Entry], tried: dict[bytes, int]
) -> tuple[list[tuple[Entry, str]], DrainReport, list[EventRecord]]:
    """Write the entries in one transaction: what could not be stored (to dead-letter), the counts of what was,
    and the late events it stored as new (for the online state). An unexpected exception rolls the whole batch
    back."""
    stored_report = DrainReport()
    dead: list[tuple[Entry, str]] = []
    events: list[tuple[bytes, EventInput, datetime]] = []
    identities: list[tuple[bytes, dict[str, Any]]] = []
    impressions: list[tuple[bytes, dict[str, Any]]] = []
    for entry in entries:
        entry_id, fields = entry
        if tried.get(entry_id, 0) >= MAX_TRIES:
            dead.append((entry, f"tried {tried[entry_id]} times without being stored"))
            continue
        try:
            payload = orjson.loads(fields[b"e"])
            if payload.get("kind") == "identify":
                identities.append((entry_id, payload))
            elif payload.get("kind") == "impression":
                impressions.append((entry_id, payload))
            else:
                event, received_at = _event_from_payload(payload)
                events.append((entry_id, event, received_at))
        except (KeyError, ValueError, TypeError) as error:
            dead.append((entry, f"unreadable entry: {error}"))

    slates = _attributions([event for _, event, _ in events])
    records = [
        (entry_id, EventRecord(event=event, received_at=received_at, attribution=_attribution(event, slates)))
        for entry_id, event, received_at in events
    ]
    with transaction.atomic():
        erased = erased_entry_ids(entries)  # after an erasure in progress, and before the next one
        if erased:
            # An erased shopper's entry that could not be stored is dropped too: a dead letter would keep its data.
            dead = [(entry, reason) for entry, reason in dead if entry[0] not in erased]
            stored_report.erased += len(erased)
            records = [(entry_id, record) for entry_id, record in records if entry_id not in erased]
            identities = [(entry_id, payload) for entry_id, payload in identities if entry_id not in erased]
            impressions = [(entry_id, payload) for entry_id, payload in impressions if entry_id not in erased]
        try:
            stored = event_log_append(records=[record for _, record in records])
        except (OperationalError, InterfaceError):
            raise  # PostgreSQL went away: the entries stay pending and are retried
        except DatabaseError as error:
            logger.warning("signals.batch_failed_isolating", extra={"error": str(error), "entries": len(records)})
            stored = set()
            by_id = {entry_id: entry for entry in entries for entry_id in [entry[0]]}
            for entry_id, record in records:
                try:
                    stored |= event_log_append(records=[record])
                except (OperationalError, InterfaceError):
                    raise
                except DatabaseError as row_error:
                    dead.append((by_id[entry_id], f"could not be stored: {row_error}"))
        stored_report.stored += len(stored)
        dead_ids = {entry[0] for entry, _ in dead}
        stored_report.duplicates += sum(
            1 for entry_id, record in records if entry_id not in dead_ids and record.event.event_id not in stored
        )
        late: dict[str, EventRecord] = {}
        for _, record in records:  # the first record of an event id is the one stored
            if record.event.event_id in stored and event_is_late(
                occurred_at=record.event.occurred_at, received_at=record.received_at
            ):
                late.setdefault(record.event.event_id, record)

        for _, payload in identities:
            IdentityLink.objects.update_or_create(
                session_id=payload["session_id"],
                defaults={"user_id": payload["user_id"], "linked_at": datetime.fromisoformat(payload["linked_at"])},
            )
        stored_report.identities += len(identities)
        if impressions:
            impressions_store(impressions=[payload for _, payload in impressions])
            stored_report.impressions += len(impressions)
    return dead, stored_report, list(late.values())


def _dead_letter(partition: int, dead: list[tuple[Entry, str]], tried: dict[bytes, int]) -> None:
    with transaction.atomic():
        DeadLetter.objects.bulk_create(
            [
                DeadLetter(
                    stream=redis_keys.event_stream(partition),
                    entry_id=entry_id.decode(),
                    payload=fields.get(b"e", b"").decode("utf-8", "replace"),
                    error=reason[:2000],
                    # the tries made: this one too, unless the entry had used them all before it
                    deliveries=min(tried.get(entry_id, 0) + 1, MAX_TRIES),
                )
                for (entry_id, fields), reason in dead
            ]
        )
    pipeline = get_control_redis().pipeline(transaction=False)
    for (entry_id, fields), reason in dead:
        pipeline.xadd(
            redis_keys.dead_letter_stream(partition), {**fields, b"source_id": entry_id, b"error": reason[:2000]}
        )
    pipeline.execute()
    logger.error("signals.dead_lettered", extra={"partition": partition, "entries": len(dead)})


def _trim_acknowledged(stream: str) -> None:
    """Drop entries every consumer has acknowledged (XADD never trims: that could drop unread events)."""
    redis = get_control_redis()
    summary = redis.xpending(stream, CONSUMER_GROUP)
    if summary["pending"]:
        min_id = summary["min"]
    else:
        groups = {group["name"]: group for group in redis.xinfo_groups(stream)}
        group = groups.get(CONSUMER_GROUP.encode()) or groups.get(CONSUMER_GROUP)
        if not group:
            return
        last = group["last-delivered-id"]
        last = last.decode() if isinstance(last, bytes) else last
        if last == "0-0":
            return
        milliseconds, sequence = last.split("-")
        min_id = f"{milliseconds}-{int(sequence) + 1}"
    redis.xtrim(stream, minid=min_id)


def _forget_idle_consumers(stream: str) -> None:
    redis = get_control_redis()
    for consumer in redis.xinfo_consumers(stream, CONSUMER_GROUP):
        if consumer["pending"] == 0 and consumer["idle"] > IDLE_CONSUMER_FORGET_MS:
            redis.xgroup_delconsumer(stream, CONSUMER_GROUP, consumer["name"])
