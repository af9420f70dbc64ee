from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personalization.errors import ApplicationError
from signals_app.services import EVENT_BATCH_MAX, EventSerializer, events_ingest
from surface_app.services import shelves_notify


class EventIngestApi(APIView):
    """Log what shoppers did: one event object, or {"events": [...]} with up to 500."""

    @extend_schema(
        request=EventSerializer,
        responses={
            202: inline_serializer(
                "EventIngestResponse",
                {
                    "accepted": serializers.IntegerField(),
                    "duplicates": serializers.IntegerField(),
                    "rejected": serializers.IntegerField(),
                    "errors": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
        examples=[
            OpenApiExample(
                "A product view",
                value={"event_id": "e-1", "type": "view", "user_id": "u-1", "item_id": "sku-1"},
            )
        ],
        operation_id="events_ingest",
    )
    def post(self, request: Request) -> Response:
        raw_events = _event_list(request.data)
        report = events_ingest(raw_events=raw_events)
        shelves_notify(user_keys={event.user_key for event in report.accepted_events})
        return Response(
            {
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "rejected": report.rejected,
                "errors": report.errors,
            },
            status=status.HTTP_202_ACCEPTED,
        )


def _event_list(body: Any) -> list[Any]:
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise ApplicationError("events: must be a list.", errors={"events": ["Must be a list."]})
        if not events:
            raise ApplicationError("events: must not be empty.", errors={"events": ["Must not be empty."]})
        if len(events) > EVENT_BATCH_MAX:
            raise ApplicationError(
                f"events: at most {EVENT_BATCH_MAX} events per request.",
                errors={"events": [f"At most {EVENT_BATCH_MAX} events per request."]},
            )
        return events
    if isinstance(body, dict):
        return [body]
    raise ApplicationError(
        'The body must be an event object or {"events": [...]}.', errors={"body": ["Must be a JSON object."]}
    )
