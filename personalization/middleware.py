"""Request ids: every log line of a request carries one, and the response returns it in X-Request-ID. And the
pages' Content-Security-Policy."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

from personalization.log_config import REQUEST_ID_HEADER, REQUEST_ID_META_KEY, request_context_bind

CSP_HEADER = "Content-Security-Policy"


class RequestIdMiddleware:
    """First in MIDDLEWARE. The context is not cleared on the way out: Django logs 4xx and 5xx responses
    (django.request) after the middleware returns, and the next request binds its own id anyway."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        request_id = request_context_bind(request.META.get(REQUEST_ID_META_KEY))
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


class ContentSecurityPolicyMiddleware:
    """A Content-Security-Policy on every page (the console, the demo): scripts only from the site itself or
    carrying this response's nonce (`<script nonce="{{ request.csp_nonce }}">`), connections to the site and its
    WebSocket server. Styles may be inline: Django's admin and the dashboard's chart swatches set style attributes,
    which a nonce cannot cover. Under /api/ only the interactive docs are HTML; the JSON answers get no header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        nonce = secrets.token_urlsafe(16)
        request.csp_nonce = nonce  # type: ignore[attr-defined]
        response = self.get_response(request)
        if "text/html" in response.get("Content-Type", ""):
            response[CSP_HEADER] = "; ".join(
                [
                    "default-src 'self'",
                    f"script-src 'self' 'nonce-{nonce}'",
                    "style-src 'self' 'unsafe-inline'",
                    "img-src 'self' data:",
                    f"connect-src 'self' {_websocket_origin()}".rstrip(),
                    "object-src 'none'",
                    "base-uri 'self'",
                    "form-action 'self'",
                    "frame-ancestors 'none'",
                ]
            )
        return response


def _websocket_origin() -> str:
    """The WebSocket server's origin (another port, so not 'self')."""
    websocket = urlsplit(settings.WEBSOCKET_PUBLIC_URL)
    return f"{websocket.scheme}://{websocket.netloc}" if websocket.netloc else ""
