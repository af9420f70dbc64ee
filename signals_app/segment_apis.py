"""Segment / RudderStack compatible ingest: `POST /api/v1/segment/track` and `POST /api/v1/segment/batch`.

Both answer 200 for every well-formed request, with counts and per-call errors, because Segment's libraries
(analytics-python, for one) treat any other status as a failed delivery and resend it. A malformed body is 400,
a body over the size limit 413, a missing or wrong key 401, a store that is down 503 with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import authentication, exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personalization.authentication import ApiKeyAuthentication
from personalization.errors import ApplicationError
from personalization.services import ApiClient, api_key_verify
from signals_app.apis import RawBodyParser, RejectedSerializer, parse_json_body
from signals_app.identity import identity_link
from signals_app.segment import (
    SEGMENT_BATCH_MAX_BYTES,
    SEGMENT_CALL_MAX_BYTES,
    MappedCall,
    SegmentReport,
    segment_call_map,
    segment_report,
)
from signals_app.services import EVENT_BATCH_MAX, events_ingest
from surface_app.services import shelves_notify

logger = logging.getLogger(__name__)


class SegmentWriteKeyAuthentication(authentication.BaseAuthentication):
    """Segment's HTTP API sends the write key as HTTP Basic: the key is the user name, the password is empty.
    Here the write key is a platform API key. Other schemes are left to the next authentication class."""

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        scheme, _, credentials = authentication.get_authorization_header(request).partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Basic base64(<write key>:)'.") from error
        write_key = decoded.partition(":")[0].strip()
        if not write_key:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Basic base64(<write key>:)'.")
        client = api_key_verify(raw_key=write_key)
        if client is None:
            raise exceptions.AuthenticationFailed("Unknown or revoked write key.")
        return (None, client)

    def authenticate_header(self, request: Request) -> str:
        return 'Basic realm="api"'


class SegmentWriteKeyScheme(OpenApiAuthenticationExtension):
    target_class = SegmentWriteKeyAuthentication
    name = "SegmentWriteKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "basic",
            "description": "Segment's write key: an API key as the user name, empty password.",
        }


def segment_calls_ingest(*, calls: list[MappedCall]) -> SegmentReport:
    """Ingests the events of all calls (in slices the size of the events API's batches), then links the
    identified sessions, so a session's events sent in the same batch as its identify join the user too."""
    raw_events = [event for call in calls for event in call.events]
    ingest_errors: list[dict[str, Any]] = []
    accepted_events = []
    for start in range(0, len(raw_events), EVENT_BATCH_MAX):
        ingest = events_ingest(raw_events=raw_events[start : start + EVENT_BATCH_MAX])
        ingest_errors.extend({**error, "index": error["index"] + start} for error in ingest.errors)
        accepted_events.extend(ingest.accepted_events)
    report = segment_report(
        calls=calls, ingest_errors=ingest_errors, accepted_ids=[event.event_id for event in accepted_events]
    )
    linked_users = set()
    for call in calls:
        for user_id, session_id in call.links:
            identity_link(user_id=user_id, session_id=session_id)
            linked_users.add(user_id)
    shelves_notify(user_keys={event.user_key for event in accepted_events} | linked_users)
    logger.info(
        "signals.segment_ingested",
        extra={
            "calls": len(calls),
            "events": len(raw_events),
            "accepted": report.accepted,
            "rejected": report.rejected,
        },
    )
    return report


@extend_schema_serializer(component_name="SegmentCall")
class SegmentCallDocSerializer(serializers.Serializer):
    """For the OpenAPI schema only: calls are mapped by signals_app.segment."""

    type = serializers.ChoiceField(
        choices=["track", "identify", "page", "screen", "alias", "group"],
        required=False,
        help_text="Required in a batch; /segment/track treats every call as track.",
    )
    messageId = serializers.CharField(max_length=100, help_text="Idempotency key.")
    event = serializers.CharField(
        required=False,
        help_text="track: E-commerce Spec v2 names map to event types (Product Viewed -> view, Order Completed "
        "-> one purchase per product, ...); other names are kept as custom events.",
    )
    userId = serializers.CharField(required=False, max_length=200)
    anonymousId = serializers.CharField(required=False, max_length=200, help_text="The session id.")
    previousId = serializers.CharField(required=False, max_length=200, help_text="alias only.")
    timestamp = serializers.DateTimeField(required=False)
    originalTimestamp = serializers.DateTimeField(required=False, help_text="Used when timestamp is absent.")
    sentAt = serializers.DateTimeField(required=False, help_text="Corrects originalTimestamp for clock skew.")
    properties = serializers.DictField(
        required=False,
        help_text="product_id or sku -> item, list_id -> placement, position (1-based) -> slot, request_id "
        "(recommendation_id, recommId) -> request_id, value / revenue / price -> value; the rest is kept.",
    )
    context = serializers.DictField(required=False)
    integrations = serializers.DictField(required=False, help_text="Ignored.")


SEGMENT_RESPONSE = inline_serializer(
    "SegmentIngestResponse",
    {
        "accepted": serializers.IntegerField(help_text="Calls stored or applied."),
        "duplicates": serializers.IntegerField(help_text="Calls whose messageId was already stored."),
        "rejected": serializers.IntegerField(),
        "errors": RejectedSerializer(many=True, help_text="index: the call's position in the batch (0 for one call)."),
    },
)
SEGMENT_ERROR_RESPONSES = {
    400: OpenApiResponse(description="The body is not JSON or not a call / batch object."),
    401: OpenApiResponse(description="Missing, unknown or revoked write key."),
    413: OpenApiResponse(description="Body over the size limit."),
}
VIEWED = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "anonymousId": "a-1",
    "timestamp": "2025-01-01T12:00:00Z",
    "properties": {"product_id": "sku-1", "list_id": "home", "position": 1, "request_id": "r-1"},
}


class SegmentTrackApi(APIView):
    """One Segment track call (at most 32 KB), as Segment's HTTP API takes it on /v1/track."""

    authentication_classes = [SegmentWriteKeyAuthentication, ApiKeyAuthentication]
    parser_classes = [RawBodyParser]

    @extend_schema(
        request=SegmentCallDocSerializer,
        responses={200: SEGMENT_RESPONSE, **SEGMENT_ERROR_RESPONSES},
        examples=[OpenApiExample("A product view", value=VIEWED, request_only=True)],
        operation_id="segment_track",
    )
    def post(self, request: Request) -> Response:
        body = parse_json_body(request, max_bytes=SEGMENT_CALL_MAX_BYTES)
        if not isinstance(body, dict):
            raise ApplicationError(
                "The body must be a Segment call object.", errors={"body": ["Must be a JSON object."]}
            )
        call = segment_call_map(body, now=datetime.now(UTC), call_type="track")
        return Response(segment_calls_ingest(calls=[call]).as_dict())


class SegmentBatchApi(APIView):
    """Segment's /v1/batch: {"batch": [calls, each with its type], "context": {...}, "integrations": {...}}, at
    most 500 KB and 32 KB a call. The valid calls are taken even when others are rejected."""

    authentication_classes = [SegmentWriteKeyAuthentication, ApiKeyAuthentication]
    parser_classes = [RawBodyParser]

    @extend_schema(
        request=inline_serializer(
            "SegmentBatch",
            {
                "batch": serializers.ListField(child=SegmentCallDocSerializer()),
                "context": serializers.DictField(required=False, help_text="Shared by every call; theirs win."),
                "integrations": serializers.DictField(required=False, help_text="Ignored."),
                "sentAt": serializers.DateTimeField(required=False),
            },
        ),
        responses={200: SEGMENT_RESPONSE, **SEGMENT_ERROR_RESPONSES},
        examples=[
            OpenApiExample(
                "A view, then the login",
                value={
                    "batch": [
                        VIEWED,
                        {"type": "identify", "messageId": "m-2", "anonymousId": "a-1", "userId": "u-1"},
                    ]
                },
                request_only=True,
            )
        ],
        operation_id="segment_batch",
    )
    def post(self, request: Request) -> Response:
        body = parse_json_body(request, max_bytes=SEGMENT_BATCH_MAX_BYTES)
        if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
            raise ApplicationError('The body must be {"batch": [...]}.', errors={"batch": ["Must be a list."]})
        if not body["batch"]:
            raise ApplicationError("batch: must not be empty.", errors={"batch": ["Must not be empty."]})
        batch_context = body.get("context")
        if batch_context is not None and not isinstance(batch_context, dict):
            raise ApplicationError("context: must be a JSON object.", errors={"context": ["Must be a JSON object."]})
        now = datetime.now(UTC)
        calls = [
            segment_call_map(call, now=now, batch_context=batch_context, batch_sent_at=body.get("sentAt"))
            for call in body["batch"]
        ]
        return Response(segment_calls_ingest(calls=calls).as_dict())
