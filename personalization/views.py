"""Liveness, readiness and metrics for the operators' tooling."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from personalization.errors import error_body
from personalization.redis_client import get_redis
from personalization.services import api_key_verify

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


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


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, behind an API key (Prometheus sends it as `bearer_token`) or a staff session."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw_key = header.partition(" ")
    has_key = scheme.lower() == "bearer" and api_key_verify(raw_key=raw_key.strip()) is not None
    is_staff = request.user.is_authenticated and request.user.is_staff
    if not (has_key or is_staff):
        response = JsonResponse(
            error_body(detail="Authentication credentials were not provided.", code="not_authenticated"),
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response
    return HttpResponse(generate_latest(_metrics_registry()), content_type=CONTENT_TYPE_LATEST)


def _metrics_registry() -> Any:
    """This process's metrics, or every worker's when PROMETHEUS_MULTIPROC_DIR is set (gunicorn), plus the
    collectors that read shared state (event streams) at scrape time."""
    from scoring_app.model_metrics import ModelAgeCollector
    from signals_app.stream_metrics import EventStreamCollector

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source: Any = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = REGISTRY

    class Combined:
        def collect(self) -> Iterator[Any]:
            yield from source.collect()
            yield from EventStreamCollector().collect()
            yield from ModelAgeCollector().collect()

    return Combined()
