"""Prometheus metrics of the Signal layer."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "signals_events_total", "Events received, by type and outcome (accepted, duplicate, rejected).", ["type", "outcome"]
)
INGEST_SECONDS = Histogram(
    "signals_ingest_seconds",
    "Time to validate and apply one ingest request (one event or a batch) to the online state.",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
REPLICAS_SHORT = Counter(
    "signals_ingest_replicas_short_total",
    "Redis Cluster masters whose replicas did not acknowledge an ingest's events within REDIS_INGEST_WAIT_TIMEOUT_MS"
    " (the events were acknowledged all the same).",
)
# Unknown types are reported under one label so that bad input cannot blow up the metric's cardinality.
_OTHER_TYPE = "other"


def events_counted(type_name: object, outcome: str) -> None:
    from graph_app.state.interface import event_type_lookup

    label = type_name if isinstance(type_name, str) and event_type_lookup(type_name) else _OTHER_TYPE
    EVENTS.labels(type=label, outcome=outcome).inc()


def ingest_observed(seconds: float) -> None:
    INGEST_SECONDS.observe(seconds)


def replicas_short_counted(masters: int) -> None:
    REPLICAS_SHORT.inc(masters)
