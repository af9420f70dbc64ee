"""Event ingest: validate, deduplicate by event id, store, update the online user state."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone
from rest_framework import serializers

from graph_app.services import shoppers_ensure
from personalization import redis_keys
from personalization.errors import flatten_errors
from personalization.redis_client import get_redis
from personalization.validation import JsonObjectField
from signals_app.event_types import BUILT_IN_EVENT_TYPES

logger = logging.getLogger(__name__)

EVENT_BATCH_MAX = 500
MAX_FUTURE_SKEW = timedelta(minutes=5)
RECENT_ITEMS_KEPT = 50
RECENT_ITEMS_TTL_SECONDS = 30 * 24 * 3600


class EventSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=100)
    type = serializers.CharField(max_length=50)
    user_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    session_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    item_id = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    timestamp = serializers.DateTimeField(required=False, allow_null=True, default=None)
    placement = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
    request_id = serializers.CharField(max_length=100, required=False, default="", allow_blank=True)
    value = serializers.FloatField(required=False, allow_null=True, default=None)
    context = JsonObjectField(required=False, default=dict)

    def validate_type(self, value: str) -> str:
        if value not in BUILT_IN_EVENT_TYPES:
            raise serializers.ValidationError(
                f"Unknown event type '{value}'. Known types: {', '.join(sorted(BUILT_IN_EVENT_TYPES))}."
            )
        return value

    def validate_timestamp(self, value: datetime | None) -> datetime | None:
        if value is not None and value > timezone.now() + MAX_FUTURE_SKEW:
            raise serializers.ValidationError("Must not be more than 5 minutes in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs["user_id"] and not attrs["session_id"]:
            raise serializers.ValidationError({"user_id": ["Either user_id or session_id is required."]})
        if BUILT_IN_EVENT_TYPES[attrs["type"]].needs_item and not attrs["item_id"]:
            raise serializers.ValidationError({"item_id": [f"Required for '{attrs['type']}' events."]})
        return attrs


@dataclass(frozen=True)
class EventInput:
    event_id: str
    type: str
    user_id: str
    session_id: str
    item_id: str
    placement: str
    request_id: str
    value: float | None
    context: dict[str, Any]
    occurred_at: datetime

    @property
    def user_key(self) -> str:
        """Whom the online state belongs to: the user, or the anonymous session until it is identified."""
        return self.user_id or f"session:{self.session_id}"


@dataclass
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    accepted_events: list[EventInput] = field(default_factory=list)


def _event_input(data: dict[str, Any], received_at: datetime) -> EventInput:
    return EventInput(
        event_id=data["event_id"],
        type=data["type"],
        user_id=data["user_id"],
        session_id=data["session_id"],
        item_id=data["item_id"],
        placement=data["placement"],
        request_id=data["request_id"],
        value=data["value"],
        context=data["context"],
        occurred_at=data["timestamp"] or received_at,
    )


def events_validate(*, raw_events: list[Any], report: IngestReport) -> list[EventInput]:
    """The valid events, first occurrence of each event id; every rejected one is reported by index and field."""
    received_at = timezone.now()
    valid: list[EventInput] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(raw_events):
        if not isinstance(raw, dict):
            report.rejected += 1
            report.errors.append({"index": index, "field": "event", "message": "Must be a JSON object."})
            continue
        serializer = EventSerializer(data=raw)
        if not serializer.is_valid():
            report.rejected += 1
            for field_name, messages in flatten_errors(serializer.errors).items():
                report.errors.append({"index": index, "field": field_name, "message": messages[0]})
            continue
        event = _event_input(serializer.validated_data, received_at)
        if event.event_id in seen_ids:
            report.duplicates += 1
            continue
        seen_ids.add(event.event_id)
        valid.append(event)
    return valid


_INSERT_EVENTS_SQL = """
INSERT INTO signals_app_event
    (event_id, type, user_id, session_id, item_id, placement, request_id, value, context, occurred_at, received_at)
SELECT e.event_id, e.type, e.user_id, e.session_id, e.item_id, e.placement, e.request_id, e.value,
       e.context::jsonb, e.occurred_at, now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
            %s::float8[], %s::text[], %s::timestamptz[])
     AS e(event_id, type, user_id, session_id, item_id, placement, request_id, value, context, occurred_at)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def _events_store(events: list[EventInput]) -> set[str]:
    """Insert the events; the ids that were new (a unique key on event_id makes resends harmless)."""
    columns = [
        [event.event_id for event in events],
        [event.type for event in events],
        [event.user_id for event in events],
        [event.session_id for event in events],
        [event.item_id for event in events],
        [event.placement for event in events],
        [event.request_id for event in events],
        [event.value for event in events],
        [json.dumps(event.context) for event in events],
        [event.occurred_at for event in events],
    ]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_EVENTS_SQL, columns)
        return {row[0] for row in cursor.fetchall()}


def _online_state_update(events: list[EventInput]) -> None:
    pipeline = get_redis().pipeline(transaction=False)
    for event in events:
        event_type = BUILT_IN_EVENT_TYPES[event.type]
        if event_type.marks_interest and event.item_id:
            key = redis_keys.user_recent_items(event.user_key)
            pipeline.lrem(key, 0, event.item_id)
            pipeline.lpush(key, event.item_id)
            pipeline.ltrim(key, 0, RECENT_ITEMS_KEPT - 1)
            pipeline.expire(key, RECENT_ITEMS_TTL_SECONDS)
        if event_type.popularity_weight and event.item_id:
            pipeline.zincrby(redis_keys.ITEM_POPULARITY, event_type.popularity_weight, event.item_id)
    pipeline.execute()


def events_ingest(*, raw_events: list[Any]) -> IngestReport:
    report = IngestReport()
    valid = events_validate(raw_events=raw_events, report=report)
    if not valid:
        return report
    with transaction.atomic():
        new_ids = _events_store(valid)
        shoppers_ensure(external_ids={event.user_id for event in valid if event.event_id in new_ids and event.user_id})
    new_events = [event for event in valid if event.event_id in new_ids]
    report.accepted = len(new_events)
    report.duplicates += len(valid) - len(new_events)
    report.accepted_events = new_events
    if new_events:
        _online_state_update(new_events)
    return report
