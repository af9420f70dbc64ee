"""Request ids: every log line of a request carries one, and the response returns it in X-Request-ID."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from personalization.log_config import REQUEST_ID_HEADER, REQUEST_ID_META_KEY, request_context_bind


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
