from __future__ import annotations

from typing import Any

import orjson
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personalization.access import user_key_of
from personalization.authentication import shopper_binding_check
from personalization.errors import ApplicationError
from personalization.live_updates import users_changed, users_changed_queue
from personalization.models import ApiScope
from personalization.validation import JsonObjectField, StrictCharField, json_limits_check, user_id_namespace_check
from signals_app.identity import identity_link
from signals_app.services import EVENT_BATCH_MAX, EVENT_BODY_MAX_BYTES, events_ingest


@extend_schema_serializer(component_name="Event")
class EventDocSerializer(serializers.Serializer):
    """For the OpenAPI schema only: events are validated by signals_app.validation (faster than DRF)."""

    event_id = serializers.CharField(max_length=100, help_text="Client-made idempotency key.")
    type = serializers.CharField(
        help_text="view, click, dwell, add_to_cart, remove_from_cart, purchase, save, skip, hide, share, search, "
        "custom, or a custom type registered in the admin."
    )
    user_id = serializers.CharField(required=False, max_length=200)
    session_id = serializers.CharField(required=False, max_length=200)
    item_id = serializers.CharField(required=False, max_length=200)
    timestamp = serializers.DateTimeField(required=False, help_text="ISO 8601 or Unix seconds; default: now.")
    placement = serializers.CharField(required=False, max_length=100)
    request_id = serializers.CharField(required=False, max_length=100, help_text="From a served slate.")
    slot = serializers.IntegerField(required=False, min_value=0)
    value = serializers.FloatField(required=False)
    context = JsonObjectField(required=False)


EVENT_BATCH_DOC = inline_serializer(
    "EventBatch",
    {"events": serializers.ListField(child=EventDocSerializer(), min_length=1, max_length=EVENT_BATCH_MAX)},
)
EVENT_INGEST_REQUEST = PolymorphicProxySerializer(
    component_name="EventIngestBody",
    serializers=[EventDocSerializer, EVENT_BATCH_DOC],
    resource_type_field_name=None,
)


class RejectedSerializer(serializers.Serializer):
    """One refused field of one event (or Segment call) of a request."""

    index = serializers.IntegerField(help_text="The event's position in the request (0 for a single event).")
    field = serializers.CharField()
    message = serializers.CharField()


class RawBodyParser(BaseParser):
    """Hands the bytes to the view, which checks the size before parsing them with orjson."""

    media_type = "*/*"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> bytes:
        return bytes(stream.read()) if stream is not None else b""


def raw_body_json(request: Request, body: bytes) -> Any:
    """orjson's reading of the request's raw body, parsed once per request: the Segment routes' body write key
    authentication reads it before the view does. Raises orjson.JSONDecodeError."""
    cached = getattr(request, "_raw_body_json", None)
    if cached is not None and cached[0] is body:
        return cached[1]
    parsed = orjson.loads(body)
    request._raw_body_json = (body, parsed)  # type: ignore[attr-defined]
    return parsed


def parse_json_body(request: Request, *, max_bytes: int) -> Any:
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    if declared > max_bytes:
        raise ApplicationError(
            f"The body must be at most {max_bytes // 1024} KB.",
            code="payload_too_large",
            errors={"body": [f"At most {max_bytes} bytes."]},
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    # request.data runs RawBodyParser once (the CSRF check of a console session may already have run it).
    body = request.data if isinstance(request.data, bytes) else b""
    if len(body) > max_bytes:
        raise ApplicationError(
            f"The body must be at most {max_bytes // 1024} KB.",
            code="payload_too_large",
            errors={"body": [f"At most {max_bytes} bytes."]},
            status_code=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    try:
        parsed = raw_body_json(request, body)
    except orjson.JSONDecodeError as error:
        raise ApplicationError(
            f"The body is not valid JSON: {error}", code="parse_error", errors={"body": [str(error)]}
        ) from error
    json_limits_check(parsed, stored=False)  # each event's context is held to more by its validation
    return parsed


INGEST_RESPONSE = inline_serializer(
    "EventIngestResponse",
    {
        "accepted": serializers.IntegerField(),
        "duplicates": serializers.IntegerField(),
        "rejected": serializers.IntegerField(),
        "errors": RejectedSerializer(many=True),
    },
)

INGEST_UNAVAILABLE_RESPONSE = OpenApiResponse(
    description="A backing store failed. A body with `applied`, `not_applied` and `unknown` (together every index of "
    "the request) says what happened to each event; a body without them (the store failed before ingest began) "
    "means none was applied. Resending `not_applied` and `unknown` events is safe: their event ids make a second "
    "copy a duplicate.",
    response=inline_serializer(
        "EventIngestUnavailable",
        {
            "detail": serializers.CharField(),
            "code": serializers.CharField(),
            "errors": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
            "message": serializers.CharField(),
            "applied": serializers.ListField(
                child=serializers.IntegerField(min_value=0),
                required=False,
                help_text="Indexes of the events applied (new, or already applied by an earlier request).",
            ),
            "not_applied": serializers.ListField(
                child=serializers.IntegerField(min_value=0),
                required=False,
                help_text="Indexes of the events not applied (rejected ones included): resend them.",
            ),
            "unknown": serializers.ListField(
                child=serializers.IntegerField(min_value=0),
                required=False,
                help_text="Indexes of the events that may or may not have been applied (no reply from the store "
                "came): resend them.",
            ),
        },
    ),
)


class EventIngestApi(APIView):
    """Log what shoppers did: one event object, or {"events": [...]} with up to 500 (1 MB)."""

    parser_classes = [RawBodyParser]
    required_scope = ApiScope.PUBLIC
    checks_shopper_token = True

    @extend_schema(
        request=EVENT_INGEST_REQUEST,
        responses={202: INGEST_RESPONSE, 503: INGEST_UNAVAILABLE_RESPONSE},
        examples=[
            OpenApiExample(
                "A product view",
                value={"event_id": "e-1", "type": "view", "user_id": "u-1", "item_id": "sku-1"},
                request_only=True,
            ),
            OpenApiExample(
                "A batch",
                value={
                    "events": [
                        {"event_id": "e-2", "type": "view", "session_id": "s-1", "item_id": "sku-1"},
                        {"event_id": "e-3", "type": "add_to_cart", "session_id": "s-1", "item_id": "sku-1"},
                    ]
                },
                request_only=True,
            ),
        ],
        operation_id="events_ingest",
    )
    def post(self, request: Request) -> Response:
        raw_events = _event_list(parse_json_body(request, max_bytes=EVENT_BODY_MAX_BYTES))
        shopper_binding_check(request, user_keys=_event_user_keys(raw_events))
        report = events_ingest(raw_events=raw_events, on_users_changed=users_changed_queue)
        return Response(
            {
                "accepted": report.accepted,
                "duplicates": report.duplicates,
                "rejected": report.rejected,
                "errors": report.errors,
            },
            status=status.HTTP_202_ACCEPTED,
        )


def _event_user_keys(raw_events: list[Any]) -> set[str]:
    """The shoppers the events are about (an event that is not an object is rejected by validation anyway)."""
    return {
        user_key_of(user_id=str(event.get("user_id") or ""), session_id=str(event.get("session_id") or ""))
        for event in raw_events
        if isinstance(event, dict)
    }


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


class IdentifyApi(APIView):
    """Join an anonymous session's history to a user (e.g. at login)."""

    required_scope = ApiScope.PUBLIC  # as Segment's identify from a browser
    checks_shopper_token = True

    @extend_schema_serializer(component_name="IdentifyInput")
    class InputSerializer(serializers.Serializer):
        session_id = StrictCharField(max_length=200)

    @extend_schema(
        request=InputSerializer,
        responses=inline_serializer(
            "IdentifyResponse",
            {
                "user_id": serializers.CharField(),
                "session_id": serializers.CharField(),
                "merged_items": serializers.IntegerField(),
            },
        ),
        operation_id="user_identify",
    )
    def post(self, request: Request, user_id: str) -> Response:
        if len(user_id) > 200 or "\x00" in user_id:
            raise ApplicationError("user_id: at most 200 characters, no NUL.", errors={"user_id": ["Invalid user id."]})
        user_id_namespace_check(user_id)
        shopper_binding_check(request, user_keys={user_id})
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = identity_link(user_id=user_id, session_id=serializer.validated_data["session_id"])
        users_changed(user_keys={user_id})
        return Response(
            {"user_id": result.user_id, "session_id": result.session_id, "merged_items": result.merged_items}
        )
