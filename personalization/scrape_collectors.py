"""The collectors that `/metrics` runs at scrape time beside the processes' own metrics: each reads shared state
(Signal's event streams, Score's model ages) when Prometheus asks, not in every worker.

A core registry that the layers fill in their `AppConfig.ready()`, because the endpoint is core's and a layer's
gauges are the layer's business: core imports no layer. Collected in registration order (INSTALLED_APPS).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.registry import Collector

# Filled once per process by `ready()`: not a cache, nothing to reset between tests.
_factories: list[Callable[[], Collector]] = []


def scrape_collector_register(factory: Callable[[], Collector]) -> None:
    """Run a fresh `factory()` collector at every scrape (once, however often the same factory registers)."""
    if factory not in _factories:
        _factories.append(factory)


def scrape_collectors() -> list[Collector]:
    return [factory() for factory in _factories]
