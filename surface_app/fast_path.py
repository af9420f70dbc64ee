"""GET /api/v1/recommendations for storefronts, answered before Django's request handling.

Storefronts ask for shelves hundreds of times a second. For each, Django's handler, the console's middleware and
DRF's request cycle cost about 1 ms of a 4 to 6 ms request on this machine (BENCHMARKS.md), more than any layer of
the serving path but Score. This WSGI wrapper serves the plain case itself, with the very same parts: Django's
request (its host and HTTPS checks), the API key's verification, scope and shopper token, the documented view's
query serializer and slate (`recommendations_serve`), which takes the key's rate limit in its state round trip.
Anything else goes to Django untouched: another path or method, no bearer key, an unknown key, a key outside its
scope or shopper, a query the serializer refuses, a host outside ALLOWED_HOSTS, plain HTTP where HTTPS is required.
So every error but one is still answered by `surface_app.apis.RecommendationsApi` and the one exception handler,
and staff sessions (the demo page, previews) still use the view. The one: a key over its rate is answered 429 here,
with the exception handler's body and headers (passed on, it would cost the view a second bucket round trip).

Django's request signals are sent as its handler sends them (database connections are checked and closed as for any
request). django-prometheus does not see these requests: `surface_api_fast_path_total` counts them, and
`serving_layer_seconds` times them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from django.conf import settings
from django.core import signals
from django.core.handlers.wsgi import WSGIRequest
from prometheus_client import Counter

from personalization.access import SHOPPER_TOKEN_HEADER, client_address, shopper_token_valid
from personalization.errors import error_body
from personalization.log_config import REQUEST_ID_HEADER, REQUEST_ID_META_KEY, request_context_bind
from personalization.rate_limits import RateLimitExceeded, rate_limited_body
from personalization.services import ApiClient, api_key_authenticate
from surface_app.apis import RecommendationsApi, recommendations_query, recommendations_serve, recommendations_user_key

logger = logging.getLogger(__name__)

PATH = "/api/v1/recommendations"
FAST_PATH = Counter(
    "surface_api_fast_path_total",
    "GET /api/v1/recommendations requests: served before Django's handler, or passed to it (errors, sessions).",
    ["outcome"],
)
_SERVED, _PASSED, _FAILED, _LIMITED = (
    FAST_PATH.labels(outcome=name) for name in ("served", "passed_to_django", "failed", "rate_limited")
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _query(request: WSGIRequest) -> tuple[dict[str, Any], ApiClient] | None:
    """The validated query and the key's client, or None when the request is not the plain case (Django answers
    it). Each check is the view's own: the host against ALLOWED_HOSTS, HTTPS (through SECURE_PROXY_SSL_HEADER), the
    API key (a wrong one is counted against its address by the view, not twice), its scope and shopper token."""
    if request.method != "GET":
        return None
    try:
        request.get_host()
        if settings.SECURE_SSL_REDIRECT and not request.is_secure():
            return None
        scheme, _, raw_key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            return None  # no bearer key: a staff session (the demo page), which the view serves
        client = api_key_authenticate(
            raw_key=raw_key.strip(), client_address=client_address(request.META), count_failure=False
        )
        if not client.covers(RecommendationsApi.required_scope):
            return None
        data: dict[str, Any] = recommendations_query.run_validation(request.GET)
        token = request.headers.get(SHOPPER_TOKEN_HEADER, "")
        if client.requires_shopper_token and not shopper_token_valid(token, user_keys={recommendations_user_key(data)}):
            return None
    except Exception:  # a refused host, key or query, a database down for a new key...: the view answers it
        return None
    return data, client


def _headers(request: WSGIRequest, body: bytes) -> list[tuple[str, str]]:
    """Those Django's middleware and DRF send with the view's response."""
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Allow", "GET, HEAD, OPTIONS"),
        ("X-Frame-Options", settings.X_FRAME_OPTIONS),
        (REQUEST_ID_HEADER, request.META[REQUEST_ID_META_KEY]),
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        headers.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    if settings.SECURE_HSTS_SECONDS and request.is_secure():
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append(("Strict-Transport-Security", value))
    return headers


def _serve(
    request: WSGIRequest, start_response: Callable[..., Any], data: dict[str, Any], client: ApiClient
) -> list[bytes]:
    try:
        body = orjson.dumps(recommendations_serve(data, rate_limit=client.rate_limit()).as_dict())
    except RateLimitExceeded as exceeded:
        _LIMITED.inc()
        body = orjson.dumps(rate_limited_body(exceeded))
        start_response("429 Too Many Requests", [*_headers(request, body), *exceeded.decision.headers().items()])
        return [body]
    except Exception:  # slate_serve degrades rather than fails: this is a bug, answered as Django would
        logger.exception("surface.fast_path_failed")
        _FAILED.inc()
        body = orjson.dumps(error_body(detail="A server error occurred.", code="error"))
        start_response("500 Internal Server Error", _headers(request, body))
        return [body]
    _SERVED.inc()
    start_response("200 OK", _headers(request, body))
    return [body]


def recommendations_fast_path(django_application: WSGIApp) -> WSGIApp:
    """`django_application`, with the plain GET /api/v1/recommendations answered first (see the module)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return django_application(environ, start_response)
        # The request's log lines carry its id; Django's RequestIdMiddleware keeps it when the view answers.
        environ[REQUEST_ID_META_KEY] = request_context_bind(environ.get(REQUEST_ID_META_KEY))
        # As Django's handler does around a request: its database connections are checked, then closed if due.
        signals.request_started.send(sender=recommendations_fast_path, environ=environ)
        try:
            request = WSGIRequest(environ)
            plain = _query(request)
            if plain is not None:
                return _serve(request, start_response, *plain)
        finally:
            signals.request_finished.send(sender=recommendations_fast_path)
        _PASSED.inc()
        return django_application(environ, start_response)

    return application
