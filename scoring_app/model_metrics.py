"""Model age and versions, read from the registry when Prometheus scrapes: an alert on the age catches a retrain
schedule that silently stopped (model staleness is a failure mode of its own).

The age is labelled by kind only, so that a new version continues the same series; which versions serve is an info
metric (`model_version_info{kind, state, version} 1`), joined on `kind` when a dashboard wants both."""

from __future__ import annotations

from collections.abc import Iterator

from django.db import DatabaseError
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from graph_app.interface import ModelState, model_versions_serving


class ModelAgeCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "model_age_seconds", "Seconds since the active model of each kind was trained.", labels=["kind"]
        )
        versions = InfoMetricFamily(
            "model_version", "The serving (active or canary) model versions of each kind.", labels=["kind", "state"]
        )
        now = timezone.now()
        try:
            rows = model_versions_serving()
        except DatabaseError:
            return  # readyz reports the database
        for row in rows:
            versions.add_metric([row.kind, row.state], {"version": row.version})
            if row.state == ModelState.ACTIVE:
                age.add_metric([row.kind], (now - row.created_at).total_seconds())
        yield age
        yield versions
