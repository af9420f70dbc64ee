"""Erasure of a shopper's signals (control plane): its events in every partition of the log, impressions, bandit
decisions, identity links and the sessions they linked (with those sessions' events), dead letters, the entries
still in the streams, and its online state, with a tombstone that makes the event-log consumer drop what was in
flight.

Order: `shopper_trace` finds everything the shopper left; `shopper_online_erase` then deletes its Redis keys and
stream entries and sets the tombstone, atomically per partition (ingest scripts run before or after it, never in
between); `shopper_log_erase` deletes the PostgreSQL rows while holding the erasure lock, which the consumer holds
(shared) while it stores a batch: a batch read before the tombstone either committed before the delete or is
stored after it and finds the tombstone (`erased_entry_ids`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from django.db import connection, transaction
from django.db.models import Q

from graph_app.state.interface import shopper_log_trace, shopper_logs_erase, user_state_erase, user_state_keys
from personalization import redis_keys
from personalization.access import user_key_of
from personalization.redis_client import get_control_redis
from signals_app.models import DeadLetter, IdentityLink

# Longer than an entry waits in a stream (the consumer's lag, a PostgreSQL outage): entries older than the erasure
# that arrive later than this would be stored.
ERASURE_TOMBSTONE_SECONDS = 14 * 24 * 3600
STREAM_READ_BATCH = 1000
# pg_advisory_xact_lock key of the erasure lock (any constant unique to it): "erasure" in ASCII.
ERASURE_LOCK_KEY = 0x65726173757265

Entry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class ShopperTrace:
    """Where a shopper's signals are: found before anything is deleted."""

    user_id: str
    # The anonymous sessions identified as the user (their state and events are the user's).
    session_ids: set[str] = field(default_factory=set)
    # The sessions the user's events carried (the user's session items are keyed by them).
    event_session_ids: set[str] = field(default_factory=set)
    request_ids: set[str] = field(default_factory=set)
    placements: set[str] = field(default_factory=set)
    # user key -> ids of its entries still in its partition's event stream; and in the dead-letter stream.
    stream_entries: dict[str, list[bytes]] = field(default_factory=dict)
    dead_letter_entries: dict[str, list[bytes]] = field(default_factory=dict)
    dead_letter_ids: set[int] = field(default_factory=set)

    @property
    def user_keys(self) -> set[str]:
        return {self.user_id} | {user_key_of(user_id="", session_id=session) for session in self.session_ids}


@dataclass(frozen=True)
class OnlineErasure:
    redis_keys: int
    stream_entries: int


@dataclass(frozen=True)
class LogErasure:
    events: int
    impressions: int
    bandit_decisions: int
    identity_links: int
    dead_letters: int


def _payload(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(fields[b"e"])
    except (KeyError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _entry_user_key(payload: dict[str, Any]) -> str:
    """Whose state an entry of the event stream belongs to ("" when it cannot tell)."""
    kind = payload.get("kind")
    if kind == "impression":
        return str(payload.get("user_key") or "")
    if kind == "identify":
        return str(payload.get("user_id") or "")
    user_id, session_id = payload.get("user_id"), payload.get("session_id")
    if not isinstance(user_id, str) or not isinstance(session_id, str) or not (user_id or session_id):
        return ""
    return user_key_of(user_id=user_id, session_id=session_id)


def _stream_read(stream: str) -> Iterable[tuple[bytes, dict[str, Any]]]:
    """Every readable entry of a stream, in batches (the backlog the consumer has not acknowledged yet)."""
    client = get_control_redis()
    start = "-"
    while True:
        entries = cast(list[Entry], client.xrange(stream, min=start, count=STREAM_READ_BATCH))
        for entry_id, fields in entries:
            payload = _payload(fields)
            if payload is not None:
                yield entry_id, payload
        if len(entries) < STREAM_READ_BATCH:
            return
        start = "(" + entries[-1][0].decode()


def shopper_trace(*, user_id: str) -> ShopperTrace:
    """Everything of the shopper's in the log and the streams (every partition: a linked session's events are in
    its own)."""
    trace = ShopperTrace(user_id=user_id)
    trace.session_ids |= set(IdentityLink.objects.filter(user_id=user_id).values_list("session_id", flat=True))
    streamed: list[tuple[bytes, dict[str, Any]]] = []
    dead: list[tuple[bytes, dict[str, Any]]] = []
    for partition in redis_keys.partitions():
        streamed += _stream_read(redis_keys.event_stream(partition))
        dead += _stream_read(redis_keys.dead_letter_stream(partition))
    # Sessions the user identified that the log has not stored yet.
    trace.session_ids |= {
        str(payload.get("session_id"))
        for _, payload in streamed + dead
        if payload.get("kind") == "identify" and payload.get("user_id") == user_id
    }
    user_keys = trace.user_keys
    for entry_id, payload in streamed:
        owner = _entry_user_key(payload)
        if owner in user_keys:
            trace.stream_entries.setdefault(owner, []).append(entry_id)
            _note(trace, owner, payload)
    for entry_id, payload in dead:
        owner = _entry_user_key(payload)
        if owner in user_keys:
            trace.dead_letter_entries.setdefault(owner, []).append(entry_id)

    logged = shopper_log_trace(user_id=trace.user_id, session_ids=trace.session_ids, user_keys=user_keys)
    trace.event_session_ids |= logged.event_session_ids
    trace.request_ids |= logged.request_ids
    trace.placements |= logged.placements
    trace.dead_letter_ids = _dead_letters(trace)
    return trace


def _note(trace: ShopperTrace, owner: str, payload: dict[str, Any]) -> None:
    """What a stream entry adds to the trace."""
    kind = payload.get("kind")
    if kind == "impression":
        trace.request_ids.add(str(payload.get("request_id")))
        trace.placements.add(str(payload.get("placement")))
    elif kind != "identify" and payload.get("user_id") and payload.get("session_id"):
        trace.event_session_ids.add(str(payload["session_id"]))


def _dead_letters(trace: ShopperTrace) -> set[int]:
    """Dead letters whose entry is the shopper's (a text search narrows them, the parsed entry decides)."""
    mentions = Q(payload__contains=trace.user_id)
    for session_id in trace.session_ids:
        mentions |= Q(payload__contains=session_id)
    user_keys = trace.user_keys
    found = set()
    for letter_id, text in DeadLetter.objects.filter(mentions).values_list("id", "payload"):
        try:
            payload = orjson.loads(text)
        except ValueError:
            continue
        if isinstance(payload, dict) and _entry_user_key(payload) in user_keys:
            found.add(letter_id)
    return found


def shopper_online_keys(trace: ShopperTrace, user_key: str) -> list[str]:
    """The keys of the user key's online state (all in its partition), and a linked session's alias."""
    keys = user_state_keys(user_key=user_key, session_ids=sorted(trace.event_session_ids | {"-"}))
    if user_key != trace.user_id:  # a linked session: the alias that sends its events to the user
        keys.append(redis_keys.session_alias(user_key.removeprefix("session:")))
    return keys


def shopper_online_erase(*, trace: ShopperTrace, keys: Mapping[str, Sequence[str]]) -> OnlineErasure:
    """Per user key, atomically in its partition: the tombstone, `keys[user_key]` deleted (every owner's keys of
    its online state), its entries in the event stream and its user nearest list removed."""
    client = get_control_redis()
    deleted = entries = 0
    for user_key in sorted(trace.user_keys):
        erased, streamed = user_state_erase(
            client=client,
            user_key=user_key,
            keys=keys.get(user_key, ()),
            stream_entries=trace.stream_entries.get(user_key, ()),
            tombstone=redis_keys.erased_shopper(user_key),
            tombstone_ttl=ERASURE_TOMBSTONE_SECONDS,
        )
        deleted += erased
        entries += streamed
        dead_ids = trace.dead_letter_entries.get(user_key)
        if dead_ids:
            entries += int(client.xdel(redis_keys.dead_letter_stream(redis_keys.partition_of(user_key)), *dead_ids))
    return OnlineErasure(redis_keys=deleted, stream_entries=entries)


def shopper_log_erase(*, trace: ShopperTrace) -> LogErasure:
    """The shopper's rows of the log, under the erasure lock (after the consumers' batches in progress)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ERASURE_LOCK_KEY])
        logs = shopper_logs_erase(
            user_id=trace.user_id,
            session_ids=trace.session_ids,
            user_keys=trace.user_keys,
            request_ids=trace.request_ids,
        )
        links, _ = IdentityLink.objects.filter(user_id=trace.user_id).delete()
        dead_letters, _ = DeadLetter.objects.filter(id__in=trace.dead_letter_ids).delete()
    return LogErasure(
        events=logs.events,
        impressions=logs.impressions,
        bandit_decisions=logs.bandit_decisions,
        identity_links=links,
        dead_letters=dead_letters,
    )


def _stream_id(raw: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = raw.decode().partition("-")
    return int(milliseconds), int(sequence or 0)


def erased_entry_ids(entries: Sequence[Entry]) -> set[bytes]:
    """The entries of erased shoppers up to their erasure, which the consumer drops. Call inside the transaction
    that stores the batch: it waits for an erasure in progress and keeps the next one waiting until the commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [ERASURE_LOCK_KEY])
    owners: dict[bytes, str] = {}
    for entry_id, fields in entries:
        payload = _payload(fields)
        owner = _entry_user_key(payload) if payload is not None else ""
        if owner:
            owners[entry_id] = owner
    if not owners:
        return set()
    user_keys = sorted(set(owners.values()))
    tombstones = cast(
        list[bytes | None], get_control_redis().mget([redis_keys.erased_shopper(user_key) for user_key in user_keys])
    )
    boundaries = {
        user_key: _stream_id(boundary)
        for user_key, boundary in zip(user_keys, tombstones, strict=True)
        if boundary is not None
    }
    return {
        entry_id
        for entry_id, owner in owners.items()
        if owner in boundaries and _stream_id(entry_id) <= boundaries[owner]
    }


def linked_sessions_forget(*, user_id: str) -> None:
    """This process's memory of the user's session links: a later event with both ids links its session again."""
    from signals_app import services

    for pair in [pair for pair in services._linked_sessions if pair[0] == user_id]:
        services._linked_sessions.pop(pair, None)
