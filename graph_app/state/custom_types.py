"""Custom event types registered by staff (control plane); published to Redis for the ingest processes."""

from __future__ import annotations

from django.db import transaction

from graph_app.state.event_types import BUILT_IN_EVENT_TYPES, EventType, custom_event_types_publish
from graph_app.state.models import CustomEventType


def custom_event_types_republish() -> None:
    custom_event_types_publish(
        [
            EventType(row.name, row.needs_item, row.popularity_weight, row.marks_interest)
            for row in CustomEventType.objects.order_by("name")
        ]
    )


def custom_event_type_save(*, event_type: CustomEventType) -> CustomEventType:
    event_type.full_clean()  # also refuses the names of built-in types
    with transaction.atomic():
        event_type.save()
        transaction.on_commit(custom_event_types_republish)
    return event_type


def custom_event_type_delete(*, event_type: CustomEventType) -> None:
    with transaction.atomic():
        event_type.delete()
        transaction.on_commit(custom_event_types_republish)


def event_types() -> dict[str, EventType]:
    """The built-in event types and the custom ones, by name (control plane: read from PostgreSQL)."""
    types = dict(BUILT_IN_EVENT_TYPES)
    for row in CustomEventType.objects.all():
        types[row.name] = EventType(row.name, row.needs_item, row.popularity_weight, row.marks_interest)
    return types
