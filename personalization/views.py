"""Liveness, readiness and metrics for the operators' tooling."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from django.db import OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from redis.exceptions import RedisError
from rest_framework.renderers import JSONRenderer

from personalization.access import OPEN, endpoint_access
from personalization.authentication import plain_view_client
from personalization.errors import error_body
from personalization.exception_handler import SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS
from personalization.models import ApiScope
from personalization.redis_client import get_redis
from personalization.scrape_collectors import scrape_collectors

logger = logging.getLogger(__name__)


@endpoint_access(OPEN)
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@endpoint_access(OPEN)
def readyz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as error:  # any driver error means "not ready", which is what we report
        logger.warning("readyz.postgres_down", extra={"error": str(error)})
        checks["postgres"] = "down"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as error:
        logger.warning("readyz.redis_down", extra={"error": str(error)})
        checks["redis"] = "down"
    ready = all(state == "ok" for state in checks.values())
    return JsonResponse({"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)


@endpoint_access(ApiScope.ADMIN)
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, behind an admin API key (Prometheus sends it as `bearer_token`) or a staff session:
    the whole platform's operation is the operators' and the console's business, not a storefront's."""
    try:
        if not (request.user.is_authenticated and request.user.is_staff):
            client = plain_view_client(request, ApiScope.ADMIN)
            if isinstance(client, HttpResponse):
                return client
    except (OperationalError, RedisError) as error:  # the key or the session cannot be checked: not a 500
        logger.warning("api.store_unavailable", extra={"error": str(error)})
        response = JsonResponse(
            error_body(detail="A backing store is unavailable; retry shortly.", code="service_unavailable"), status=503
        )
        response["Retry-After"] = str(SERVICE_UNAVAILABLE_RETRY_AFTER_SECONDS)
        return response
    return HttpResponse(generate_latest(_metrics_registry()), content_type=CONTENT_TYPE_LATEST)


class _JsonErrors:
    """The schema and the docs answer in YAML and HTML: their errors (401, 403, 429) in the API's JSON all the same."""

    def handle_exception(self, exc: Exception) -> Any:
        response = super().handle_exception(exc)  # type: ignore[misc]
        self.request.accepted_renderer = JSONRenderer()  # type: ignore[attr-defined]
        self.request.accepted_media_type = "application/json"  # type: ignore[attr-defined]
        return response


class ApiSchemaView(_JsonErrors, SpectacularAPIView):
    """The OpenAPI schema, public: a newcomer reads what the API offers before holding a key."""

    required_scope = OPEN
    throttle_classes: list[type] = []


class ApiDocsView(_JsonErrors, SpectacularSwaggerSplitView):
    """Swagger UI with its setup script served from this URL (`?script`), not inline: the page's
    Content-Security-Policy allows scripts from the site only. Public, like the schema: calls made from it need
    a key (its Authorize button)."""

    required_scope = OPEN
    throttle_classes: list[type] = []


def _metrics_registry() -> Any:
    """This process's metrics, or every worker's when PROMETHEUS_MULTIPROC_DIR is set (gunicorn), plus the
    collectors that read shared state (event streams, model ages) at scrape time (`scrape_collectors`)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = REGISTRY

    class Combined:
        def collect(self) -> Iterator[Any]:
            yield from source.collect()
            for collector in scrape_collectors():
                yield from collector.collect()

    return Combined()
