"""API keys in DRF: authentication, each endpoint's scope, the shopper binding and the keys' request rates.

A request goes: the key (401 when wrong, 429 when its address sent too many wrong ones) -> `ScopedAccess` (403
when the key's scope does not include the view's `required_scope`, see `personalization.access`) ->
`ApiKeyRateLimit` (429 over the key's rate) -> the view, which checks a bound key's shopper token against the
shopper it is asked about (`shopper_binding_check`, 403). A staff member's console session passes as before.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import authentication, exceptions, permissions, throttling
from rest_framework.request import Request

from personalization.access import DEFAULT_SCOPE, SHOPPER_TOKEN_HEADER, client_address, shopper_token_valid
from personalization.errors import error_body
from personalization.rate_limits import (
    RateLimitExceeded,
    auth_failures_blocked,
    auth_failures_refusal,
    rate_limited_body,
)
from personalization.services import ApiClient, ApiKeyRefused, api_key_authenticate


def api_key_client(raw_key: str, request: HttpRequest | Request) -> ApiClient:
    """The key's client; raises AuthenticationFailed (401) or RateLimitExceeded (429: too many wrong keys)."""
    try:
        return api_key_authenticate(raw_key=raw_key, client_address=client_address(request.META))
    except ApiKeyRefused as refused:
        if refused.too_many is not None:
            raise refused.too_many from None
        raise exceptions.AuthenticationFailed(str(refused)) from None


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <api key>`; a storefront, not a person, so request.user stays None."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiClient] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        return (None, api_key_client(raw_key.strip(), request))

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


def basic_write_key(credentials: bytes) -> str:
    """The write key of HTTP Basic credentials as Segment's libraries send them (the key is the user name, the
    password empty); raises AuthenticationFailed."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise exceptions.AuthenticationFailed("Use 'Authorization: Basic base64(<write key>:)'.") from error
    write_key = decoded.partition(":")[0].strip()
    if not write_key:
        raise exceptions.AuthenticationFailed("Use 'Authorization: Basic base64(<write key>:)'.")
    return write_key


def scope_refusal(client: ApiClient, required_scope: str) -> str:
    return f"This API key's scope is '{client.scope}'; this endpoint needs '{required_scope}' or broader."


class ScopedAccess(permissions.BasePermission):
    """A key whose scope includes the view's `required_scope` (default server), or a staff member logged in to
    the console (the demo page, previews, the docs)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        client = request.auth
        if isinstance(client, ApiClient):
            required = getattr(view, "required_scope", DEFAULT_SCOPE)
            if not client.covers(required):
                raise exceptions.PermissionDenied(scope_refusal(client, required), code="insufficient_scope")
            if client.requires_shopper_token and not getattr(view, "checks_shopper_token", False):
                raise exceptions.PermissionDenied(
                    "This API key is bound to shoppers, and this endpoint cannot check a shopper token.",
                    code="shopper_token_required",
                )
            return True
        user = request.user
        return bool(user is not None and user.is_authenticated and user.is_staff)


def shopper_binding_check(request: Request | HttpRequest, *, user_keys: Iterable[str]) -> None:
    """For a key bound to shoppers: 403 unless X-Shopper-Token signs the one shopper the call is about (views that
    set `checks_shopper_token` call it once they know the shopper)."""
    client = request.auth if isinstance(request, Request) else None
    if not (isinstance(client, ApiClient) and client.requires_shopper_token):
        return
    if not shopper_token_valid(request.headers.get(SHOPPER_TOKEN_HEADER, ""), user_keys=user_keys):
        raise exceptions.PermissionDenied(
            f"This API key is bound to one shopper: {SHOPPER_TOKEN_HEADER} must sign the user id (or "
            "'session:<session id>') of every shopper the call is about.",
            code="shopper_token_mismatch",
        )


class ApiKeyRateLimit(throttling.BaseThrottle):
    """Takes a token from the key's bucket in a round trip of its own (429 when empty). Views that spend a Redis
    round trip anyway queue it there instead and set `throttle_classes = []` (GET /recommendations)."""

    def allow_request(self, request: Request, view: Any) -> bool:
        client = request.auth
        if isinstance(client, ApiClient):
            client.rate_limit_take()  # raises RateLimitExceeded
        return True


def plain_view_client(request: HttpRequest, required_scope: str) -> ApiClient | HttpResponse:
    """The same checks for a plain Django view taking `Authorization: Bearer` (GET /metrics): its client, or the
    error response (401, 403, 429) in the API's one shape."""
    scheme, _, raw_key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        return _plain_error(401, "Authentication credentials were not provided.", "not_authenticated")
    try:
        client = api_key_client(raw_key.strip(), request)
        if not client.covers(required_scope):
            return _plain_error(403, scope_refusal(client, required_scope), "insufficient_scope")
        client.rate_limit_take()
    except exceptions.AuthenticationFailed as failed:
        return _plain_error(401, str(failed.detail), "authentication_failed")
    except RateLimitExceeded as exceeded:
        return _rate_limited(exceeded)
    return client


def costly_body_refusal(request: HttpRequest) -> HttpResponse | None:
    """Before a body costs more to read than it took to send (inflating gzip): the 401 or 429 its credentials
    will get anyway, or None. A wrong key is refused (and counted) here; without a key (a body write key, a
    console session) an address past API_AUTH_FAILURES_MAX wrong keys gets its 429 before the body is read."""
    header = request.headers.get("Authorization", "")
    try:
        if header:
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "basic":
                api_key_client(basic_write_key(credentials.encode("latin-1")), request)
            elif scheme.lower() == "bearer" and credentials.strip():
                api_key_client(credentials.strip(), request)
            else:
                return _plain_error(401, "Use 'Authorization: Bearer <api key>'.", "authentication_failed")
        elif (blocked := auth_failures_blocked(client_address=client_address(request.META))) is not None:
            raise auth_failures_refusal(blocked)
    except exceptions.AuthenticationFailed as failed:
        return _plain_error(401, str(failed.detail), "authentication_failed")
    except RateLimitExceeded as exceeded:
        return _rate_limited(exceeded)
    return None


def _rate_limited(exceeded: RateLimitExceeded) -> JsonResponse:
    response = JsonResponse(rate_limited_body(exceeded), status=429)
    for name, value in exceeded.decision.headers().items():
        response[name] = value
    return response


def _plain_error(status: int, detail: str, code: str) -> JsonResponse:
    response = JsonResponse(error_body(detail=detail, code=code), status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response
