"""GET /api/v1/recommendations for storefronts, answered before Django's request handling.

Storefronts ask for shelves hundreds of times a second. For each, Django's handler, the console's middleware and
DRF's request cycle cost about 1 ms of a 4 to 6 ms request on this machine (BENCHMARKS.md), more than any layer of
the serving path but Score. This WSGI wrapper serves the plain case itself, with the very same parts: the API key
check (`api_key_verify`), the documented view's query serializer and slate (`recommendations_serve`). Anything
else goes to Django untouched: another path or method, no bearer key, an unknown key, a query the serializer
refuses, a host outside ALLOWED_HOSTS, plain HTTP where HTTPS is required. So every error is still answered by
`surface_app.apis.RecommendationsApi` and the one exception handler, and staff sessions (the demo page, previews)
still use the view.

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
from django.core.handlers.wsgi import get_str_from_wsgi
from django.http import QueryDict
from django.http.request import split_domain_port, validate_host
from prometheus_client import Counter

from personalization.services import api_key_verify
from surface_app.apis import recommendations_query, recommendations_serve

logger = logging.getLogger(__name__)

PATH = "/api/v1/recommendations"
FAST_PATH = Counter(
    "surface_api_fast_path_total",
    "GET /api/v1/recommendations requests: served before Django's handler, or passed to it (errors, sessions).",
    ["outcome"],
)
_SERVED, _PASSED, _FAILED = (FAST_PATH.labels(outcome=name) for name in ("served", "passed_to_django", "failed"))

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _is_secure(environ: dict[str, Any]) -> bool:
    """As `HttpRequest.is_secure`: the proxy's header when SECURE_PROXY_SSL_HEADER names one, else the scheme."""
    if settings.SECURE_PROXY_SSL_HEADER:
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        value = environ.get(header)
        if value is not None:
            return bool(value.split(",", 1)[0].strip() == secure_value)
    return bool(environ.get("wsgi.url_scheme") == "https")


def _query(environ: dict[str, Any]) -> dict[str, Any] | None:
    """The validated query, or None when the request is not the plain case (Django answers it)."""
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != PATH:
        return None
    if settings.SECURE_SSL_REDIRECT and not _is_secure(environ):
        return None
    if settings.USE_X_FORWARDED_HOST and "HTTP_X_FORWARDED_HOST" in environ:
        return None
    domain, _ = split_domain_port(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
    allowed = settings.ALLOWED_HOSTS or ([".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    if not domain or not validate_host(domain, allowed):
        return None
    scheme, _, raw_key = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        return None
    try:
        if api_key_verify(raw_key=raw_key.strip()) is None:
            return None
        query = QueryDict(get_str_from_wsgi(environ, "QUERY_STRING", ""))
        data: dict[str, Any] = recommendations_query.run_validation(query)
    except Exception:  # a refused query, a database down for a new key...: the view answers, with its errors
        return None
    return data


def _headers(environ: dict[str, Any], body: bytes) -> list[tuple[str, str]]:
    """Those Django's middleware and DRF send with the view's response."""
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Allow", "GET, HEAD, OPTIONS"),
        ("X-Frame-Options", settings.X_FRAME_OPTIONS),
    ]
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        headers.append(("Referrer-Policy", policy if isinstance(policy, str) else ",".join(policy)))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    if settings.SECURE_HSTS_SECONDS and _is_secure(environ):
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append(("Strict-Transport-Security", value))
    return headers


def _serve(environ: dict[str, Any], start_response: Callable[..., Any], data: dict[str, Any]) -> list[bytes]:
    try:
        body = orjson.dumps(recommendations_serve(data).as_dict())
    except Exception:  # slate_serve degrades rather than fails: this is a bug, answered as Django would
        logger.exception("surface.fast_path_failed")
        _FAILED.inc()
        body = orjson.dumps({"detail": "A server error occurred.", "code": "error", "errors": {}})
        start_response("500 Internal Server Error", _headers(environ, body))
        return [body]
    _SERVED.inc()
    start_response("200 OK", _headers(environ, body))
    return [body]


def recommendations_fast_path(django_application: WSGIApp) -> WSGIApp:
    """`django_application`, with the plain GET /api/v1/recommendations answered first (see the module)."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return django_application(environ, start_response)
        # As Django's handler does around a request: its database connections are checked, then closed if due.
        signals.request_started.send(sender=recommendations_fast_path, environ=environ)
        try:
            data = _query(environ)
            if data is not None:
                return _serve(environ, start_response, data)
        finally:
            signals.request_finished.send(sender=recommendations_fast_path)
        _PASSED.inc()
        return django_application(environ, start_response)

    return application
