"""Every API error in one shape: {"detail": str, "code": str, "errors": {field: [messages]}, "message": str}."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from redis.exceptions import RedisError
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from personalization.errors import ApplicationError, error_body, first_message, flatten_errors
from personalization.rate_limits import RateLimitExceeded, rate_limited_body

logger = logging.getLogger(__name__)


SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS = 1


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 for a URL that no route matches (handler404): under /api/ in the API's error shape (an id with
    a "/" in it matches no route, for one), elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(detail="No API endpoint matches this URL.", code="not_found"), status=404)
    return defaults.page_not_found(request, exception)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, (RedisError, OperationalError)):
        # A store is down: tell the client to retry shortly instead of failing with a 500.
        logger.warning("api.store_unavailable", extra={"error": str(exc)})
        return Response(
            error_body(detail="A backing store is unavailable; retry shortly.", code="service_unavailable"),
            status=503,
            headers={"Retry-After": str(SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, DataError):
        # A safety net: the views validate their input, but a value PostgreSQL refuses is bad input, not a 500.
        logger.warning("api.data_error", extra={"error": str(exc)})
        return Response(
            error_body(detail="A value in the request cannot be stored or searched for.", code="invalid"),
            status=400,
        )
    if isinstance(exc, RateLimitExceeded):
        return Response(rate_limited_body(exc), status=429, headers=exc.decision.headers())
    if isinstance(exc, ApplicationError):
        return Response(
            {**error_body(detail=exc.message, code=exc.code, errors=exc.errors), **exc.extra},
            status=exc.status_code,
            headers=exc.headers or None,
        )
    if isinstance(exc, DjangoValidationError):
        errors = flatten_errors(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
        return Response(error_body(detail=first_message(errors), code="invalid", errors=errors), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()

    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        response.data = error_body(detail=first_message(errors), code="invalid", errors=errors)
    elif isinstance(exc, exceptions.ParseError):
        # A body that is not JSON: the body is the field to blame.
        response.data = error_body(detail=str(exc.detail), code="parse_error", errors={"body": [str(exc.detail)]})
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        code = getattr(detail, "code", None) or exc.default_code
        response.data = error_body(detail=str(detail), code=str(code))
    return response
