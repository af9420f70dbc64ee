"""Segment / RudderStack compatible ingest. A source's data plane URL is `<base>/api/v1/segment`: below it,
`/v1/batch`, `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias` and `/v1/group` (Segment's HTTP
Tracking API and libraries, RudderStack's), and analytics.js's `/v1/b`, `/v1/t`, ... (see config/urls.py); the
original `POST /api/v1/segment/track` and `/api/v1/segment/batch` stay.

All answer 200 for every well-formed request, with counts and per-call errors, because Segment's libraries
(analytics-python, for one) treat any other status as a failed delivery and resend it. A malformed body is 400,
a body over the size limit 413, a missing or wrong key 401, a store that is down 503 with Retry-After; gzip
bodies are inflated before (personalization.request_encoding).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    extend_schema,
    extend_schema_serializer,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import authentication, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from personalization.authentication import ApiKeyAuthentication, api_key_client, basic_write_key
from personalization.errors import ApplicationError
from personalization.live_updates import users_changed
from personalization.models import ApiScope
from personalization.services import ApiClient
from personalization.validation import JsonObjectField
from signals_app.apis import RawBodyParser, RejectedSerializer, parse_json_body, raw_body_json
from signals_app.identity import identity_link
from signals_app.segment import (
    CALL_TYPES,
    SEGMENT_BATCH_MAX_BYTES,
    SEGMENT_CALL_MAX_BYTES,
    MappedCall,
    SegmentReport,
    segment_call_map,
    segment_report,
)
from signals_app.services import EVENT_BATCH_MAX, IngestIncomplete, events_ingest

logger = logging.getLogger(__name__)

SEGMENT_CALL_TYPES = tuple(sorted(CALL_TYPES))
CORS_PREFLIGHT_MAX_AGE_SECONDS = 86400


class SegmentWriteKeyAuthentication(authentication.BaseAuthentication):
    """Segment's HTTP API sends the write key as HTTP Basic: the key is the user name, the password is empty.
    Here the write key is a platform API key. Other schemes are left to the next authentication class."""

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        scheme, _, credentials = authentication.get_authorization_header(request).partition(b" ")
        if scheme.lower() != b"basic":
            return None
        return (None, api_key_client(basic_write_key(credentials), request))

    def authenticate_header(self, request: Request) -> str:
        return 'Basic realm="api"'


class SegmentBodyWriteKeyAuthentication(authentication.BaseAuthentication):
    """analytics.js sends no Authorization header (a plain-text POST, so browsers skip the CORS preflight): the
    write key is the body's `writeKey`, which Segment's HTTP API also takes. Only when no header authenticated."""

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        body = request.data if isinstance(request.data, bytes) else b""
        if not body or len(body) > SEGMENT_BATCH_MAX_BYTES or authentication.get_authorization_header(request):
            return None  # the view reports an oversized body; a header was refused by its own class
        try:
            parsed = raw_body_json(request, body)
        except orjson.JSONDecodeError:
            return None  # the view reports it once authenticated; unauthenticated, the key is missing
        write_key = parsed.get("writeKey") if isinstance(parsed, dict) else None
        if not isinstance(write_key, str) or not write_key.strip():
            return None
        return (None, api_key_client(write_key.strip(), request))


class SegmentWriteKeyScheme(OpenApiAuthenticationExtension):
    target_class = SegmentWriteKeyAuthentication
    name = "SegmentWriteKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "basic",
            "description": "Segment's write key: an API key as the user name, empty password.",
        }


class SegmentBodyWriteKeyScheme(OpenApiAuthenticationExtension):
    """OpenAPI has no security scheme for a key in the body: the bodies' `writeKey` field documents it."""

    target_class = SegmentBodyWriteKeyAuthentication
    name: list[str] = []

    def get_security_requirement(self, auto_schema: Any) -> None:
        return None

    def get_security_definition(self, auto_schema: Any) -> list[dict[str, Any]]:
        return []


def segment_calls_ingest(*, calls: list[MappedCall], store_traits: bool) -> SegmentReport:
    """Ingests the events of all calls (in slices the size of the events API's batches), then links the
    identified sessions, so a session's events sent in the same batch as its identify join the user too, then
    merges the identify and group traits when `store_traits` (a key that may write users' traits)."""
    raw_events = [event for call in calls for event in call.events]
    ingest_errors: list[dict[str, Any]] = []
    accepted_events = []
    for start in range(0, len(raw_events), EVENT_BATCH_MAX):
        end = min(start + EVENT_BATCH_MAX, len(raw_events))
        try:
            ingest = events_ingest(raw_events=raw_events[start:end])
        except IngestIncomplete as incomplete:
            # Indexes of the whole request's events: the slices before were applied (but their rejected events),
            # those after were not sent.
            rejected = {error["index"] for error in ingest_errors}
            raise IngestIncomplete(
                applied=[*(i for i in range(start) if i not in rejected), *(i + start for i in incomplete.applied)],
                not_applied=sorted(
                    {*rejected, *(i + start for i in incomplete.not_applied), *range(end, len(raw_events))}
                ),
                unknown=[i + start for i in incomplete.unknown],
            ) from incomplete
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
    traits_by_user = segment_traits_store(calls=calls) if store_traits else {}
    users_changed(user_keys={event.user_key for event in accepted_events} | linked_users | set(traits_by_user))
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


def segment_traits_store(*, calls: list[MappedCall]) -> dict[str, dict[str, Any]]:
    """Merges the identify and group traits of the calls, in order, into each user's traits (one write per user);
    returns what was merged, by user."""
    from graph_app.interface import shopper_traits_merge

    traits_by_user: dict[str, dict[str, Any]] = {}
    for call in calls:
        for user_id, traits in call.traits:
            traits_by_user[user_id] = {**traits_by_user.get(user_id, {}), **traits}
    for user_id, traits in traits_by_user.items():
        shopper_traits_merge(external_id=user_id, traits=traits)
    return traits_by_user


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
    groupId = serializers.CharField(required=False, max_length=200, help_text="group only.")
    traits = JsonObjectField(
        required=False,
        help_text="identify: merged into the user's traits (rule audiences match them); group: merged as "
        "group.<name>, with group.id the groupId.",
    )
    name = serializers.CharField(required=False, help_text="page / screen: kept in the event's context.")
    category = serializers.CharField(required=False, help_text="page / screen: kept in the event's context.")
    timestamp = serializers.DateTimeField(required=False)
    originalTimestamp = serializers.DateTimeField(required=False, help_text="Used when timestamp is absent.")
    sentAt = serializers.DateTimeField(required=False, help_text="Corrects originalTimestamp for clock skew.")
    properties = JsonObjectField(
        required=False,
        help_text="product_id or sku -> item, list_id -> placement, position (1-based) -> slot, request_id "
        "(recommendation_id, recommId) -> request_id, value / revenue / price -> value; the rest is kept.",
    )
    context = JsonObjectField(required=False)
    integrations = JsonObjectField(required=False, help_text="Ignored.")
    writeKey = serializers.CharField(required=False, help_text="The write key, when not in a header.")


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
CALL_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": VIEWED,
    "identify": {"messageId": "m-2", "anonymousId": "a-1", "userId": "u-1", "traits": {"plan": "gold"}},
    "page": {"messageId": "m-3", "anonymousId": "a-1", "name": "Home", "properties": {"path": "/"}},
    "screen": {"messageId": "m-4", "userId": "u-1", "name": "Cart"},
    "alias": {"messageId": "m-5", "previousId": "a-1", "userId": "u-1"},
    "group": {"messageId": "m-6", "userId": "u-1", "groupId": "acme", "traits": {"plan": "enterprise"}},
}


class SegmentSourceApi(APIView):
    """What every Segment route shares: the write key (HTTP Basic, Bearer, or `writeKey` in the body), the raw
    body, and CORS for browsers (analytics.js and RudderStack's JavaScript SDK post from the storefront's pages)."""

    authentication_classes = [SegmentWriteKeyAuthentication, ApiKeyAuthentication, SegmentBodyWriteKeyAuthentication]
    parser_classes = [RawBodyParser]
    # Event ingest, as a browser-shipped write key does on Segment. The libraries cannot send a shopper token, so
    # a key bound to shoppers is refused here (`checks_shopper_token` unset).
    required_scope = ApiScope.PUBLIC

    def check_permissions(self, request: Request) -> None:
        if request.method != "OPTIONS":  # a browser's CORS preflight carries no credentials
            super().check_permissions(request)

    @staticmethod
    def traits_trusted(request: Request) -> bool:
        """Users' traits gate compliance rules (an age, say): only a server key writes them, never a key that a
        web page ships; a public key's identify still links the session."""
        return isinstance(request.auth, ApiClient) and request.auth.covers(ApiScope.SERVER)

    @extend_schema(exclude=True)
    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        requested = request.headers.get("Access-Control-Request-Headers", "")
        return Response(
            status=status.HTTP_204_NO_CONTENT,
            headers={
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": requested or "Authorization, Content-Type, Content-Encoding",
                "Access-Control-Max-Age": str(CORS_PREFLIGHT_MAX_AGE_SECONDS),
            },
        )

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        # Any origin, without cookies: the write key is the credential, as on Segment's own API.
        response["Access-Control-Allow-Origin"] = "*"
        return response


class SegmentCallApi(SegmentSourceApi):
    """One Segment call (at most 32 KB) of the type its path names, as Segment's HTTP API takes them on
    /v1/track, /v1/identify, /v1/page, /v1/screen, /v1/alias and /v1/group."""

    call_type = "track"

    def post(self, request: Request) -> Response:
        body = parse_json_body(request, max_bytes=SEGMENT_CALL_MAX_BYTES)
        if not isinstance(body, dict):
            raise ApplicationError(
                "The body must be a Segment call object.", errors={"body": ["Must be a JSON object."]}
            )
        call = segment_call_map(body, now=datetime.now(UTC), call_type=self.call_type)
        return Response(segment_calls_ingest(calls=[call], store_traits=self.traits_trusted(request)).as_dict())


class SegmentBatchApi(SegmentSourceApi):
    """Segment's /v1/batch: {"batch": [calls, each with its type], "context": {...}, "integrations": {...}}, at
    most 500 KB and 32 KB a call. The valid calls are taken even when others are rejected."""

    @extend_schema(
        request=inline_serializer(
            "SegmentBatch",
            {
                "batch": serializers.ListField(child=SegmentCallDocSerializer(), min_length=1),
                "context": JsonObjectField(required=False, help_text="Shared by every call; theirs win."),
                "integrations": JsonObjectField(required=False, help_text="Ignored."),
                "sentAt": serializers.DateTimeField(required=False),
                "writeKey": serializers.CharField(required=False, help_text="The write key, when not in a header."),
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
        return Response(segment_calls_ingest(calls=calls, store_traits=self.traits_trusted(request)).as_dict())


def _call_api(call_type: str, *, operation_id: str | None) -> type[SegmentCallApi]:
    """The view of one call type; without an operation id it is an alias the schema leaves out."""
    view = type(f"Segment{call_type.title()}CallApi", (SegmentCallApi,), {"call_type": call_type})
    schema = (
        extend_schema(
            request=SegmentCallDocSerializer,
            responses={200: SEGMENT_RESPONSE, **SEGMENT_ERROR_RESPONSES},
            examples=[OpenApiExample("A call", value=CALL_EXAMPLES[call_type], request_only=True)],
            operation_id=operation_id,
        )
        if operation_id
        else extend_schema(exclude=True)
    )
    return extend_schema_view(post=schema)(view)


# The original single-call route, /api/v1/segment/track.
SegmentTrackApi = _call_api("track", operation_id="segment_track")


@extend_schema_view(post=extend_schema(operation_id="segment_v1_batch"))
class SegmentSourceBatchApi(SegmentBatchApi):
    """/v1/batch under a source's data plane URL, where Segment's and RudderStack's libraries post."""


@extend_schema_view(post=extend_schema(exclude=True))
class SegmentBrowserBatchApi(SegmentBatchApi):
    """analytics.js's batching delivery posts to /v1/b."""


# Below a source's data plane URL (<base>/api/v1/segment): the paths of Segment's HTTP Tracking API and
# libraries (/v1/track, ...), and analytics.js's one-letter ones (/v1/t, ...: the first letter of the type).
SOURCE_CALL_APIS: dict[str, type[SegmentCallApi]] = {
    **{kind: _call_api(kind, operation_id=f"segment_v1_{kind}") for kind in SEGMENT_CALL_TYPES},
    **{kind[0]: _call_api(kind, operation_id=None) for kind in SEGMENT_CALL_TYPES},
}
