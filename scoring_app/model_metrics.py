"""Model age, read from the registry when Prometheus scrapes: an alert on it catches a retrain schedule that
silently stopped (model staleness is a failure mode of its own)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from scoring_app.models import ModelVersion


class ModelAgeCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily(
            "model_age_seconds",
            "Seconds since the serving (active or canary) model was trained, per kind.",
            labels=["kind", "state", "version"],
        )
        now = timezone.now()
        try:
            rows = list(
                ModelVersion.objects.filter(
                    state__in=[ModelVersion.State.ACTIVE, ModelVersion.State.CANARY]
                ).values_list("kind", "state", "version", "created_at")
            )
        except DatabaseError:
            return  # readyz reports the database
        for kind, state, version, created_at in rows:
            age.add_metric([kind, state, version], (now - created_at).total_seconds())
        yield age
