"""The console dashboard's reads: per-placement KPIs per day from the impression and event logs (PostgreSQL), and
latency, degraded responses and feature age from the Prometheus metrics the /metrics view exposes.

Definitions (the page states them too):
- An impression is one item shown in a served slate (`Impression`, one row per slot).
- A click, add to cart or purchase counts when the event carried the slate's `request_id` and its item was shown
  in it (the consumer attributed it to the slot: `attributed_slot`). Rates count impressions that had at least one
  such event (a shopper clicking the same item twice counts once), so they are at most 1.
- Revenue is the sum of the attributed purchases' `value`; a purchase sent without a value counts the item's
  catalog price (as it is now: the catalog keeps no price history). RPM is revenue per thousand impressions.
- Days are UTC days of the impression (`served_at`): an event is counted on the day its item was shown, so a
  day's rates are final once its slates' events have arrived.
- Latency, degraded responses and feature age come from the serving processes' metrics since they started (every
  gunicorn worker merged when PROMETHEUS_MULTIPROC_DIR is set); quantiles are estimated from the histogram
  buckets the way Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.utils import timezone

from graph_app.interface import model_versions_serving
from graph_app.state.interface import placement_day_outcomes
from personalization.db_router import lag_tolerant_reads
from personalization.views import _metrics_registry

# Attributed events may carry a client timestamp a little before the slate was logged as served.
EVENT_CLOCK_SLACK = timedelta(days=1)
OUTCOME_TYPES = ("click", "add_to_cart", "purchase")

# The layers of a recommendation (surface_app/serving/slates.py `serving_layer_seconds{layer}`), then ingest.
SERVING_LAYERS = (
    ("graph_state", "Graph: user state"),
    ("score_retrieval", "Score: retrieval"),
    ("score_ranking", "Score: ranking"),
    ("surface", "Surface: rules, caps, logging"),
    ("total", "Recommendation, total"),
)
SIGNAL_LAYER = ("signal_ingest", "Signal: event ingest")


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class PlacementDay:
    """One placement's numbers for one UTC day."""

    placement: str
    day: date
    impressions: int
    clicks: int = 0
    add_to_carts: int = 0
    purchases: int = 0
    revenue: float = 0.0

    @property
    def ctr(self) -> float | None:
        return _ratio(self.clicks, self.impressions)

    @property
    def add_to_cart_rate(self) -> float | None:
        return _ratio(self.add_to_carts, self.impressions)

    @property
    def purchase_rate(self) -> float | None:
        return _ratio(self.purchases, self.impressions)

    @property
    def rpm(self) -> float | None:
        """Revenue per thousand impressions."""
        ratio = _ratio(self.revenue, self.impressions)
        return ratio * 1000 if ratio is not None else None


@dataclass(frozen=True)
class PlacementKpis:
    """Every placement's days in a window of UTC days (first_day to last_day, both included)."""

    first_day: date
    last_day: date
    rows: list[PlacementDay]

    @property
    def days(self) -> list[date]:
        return [self.first_day + timedelta(days=offset) for offset in range((self.last_day - self.first_day).days + 1)]

    @property
    def placements(self) -> list[str]:
        return sorted({row.placement for row in self.rows})

    def grid(self) -> dict[str, list[PlacementDay]]:
        """Per placement, one entry per day of the window (a day without impressions: zeros)."""
        found = {(row.placement, row.day): row for row in self.rows}
        return {
            placement: [found.get((placement, day), PlacementDay(placement, day, 0)) for day in self.days]
            for placement in self.placements
        }

    def split(self, known: Collection[str]) -> tuple[PlacementKpis, dict[str, int]]:
        """These KPIs for the `known` placements only, and the impressions of each other name (a storefront's typo,
        served with the defaults); all of them when no placement is configured."""
        if not known:
            return self, {}
        unknown: dict[str, int] = defaultdict(int)
        for row in self.rows:
            if row.placement not in known:
                unknown[row.placement] += row.impressions
        rows = [row for row in self.rows if row.placement in known]
        return PlacementKpis(self.first_day, self.last_day, rows), dict(sorted(unknown.items()))

    def totals(self) -> list[PlacementDay]:
        """Per placement, the whole window summed (`day` is the window's first day)."""
        sums: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0.0])
        for row in self.rows:
            total = sums[row.placement]
            for index, value in enumerate((row.impressions, row.clicks, row.add_to_carts, row.purchases, row.revenue)):
                total[index] += value
        return [
            PlacementDay(placement, self.first_day, int(t[0]), int(t[1]), int(t[2]), int(t[3]), float(t[4]))
            for placement, t in sorted(sums.items())
        ]


@lag_tolerant_reads()
def placement_kpis_list(*, first_day: date, last_day: date) -> PlacementKpis:
    """Impressions, clicks, add to carts, purchases and revenue per placement per UTC day, in one SQL round trip.

    Served by `impression_served_time` (the window's impressions), `event_attributed_time` (the attributed events
    since the window began, a partial index) and `impression_unique_slot` (an event's impression).
    """
    start = datetime.combine(first_day, time.min, tzinfo=UTC)
    end = datetime.combine(last_day + timedelta(days=1), time.min, tzinfo=UTC)
    outcomes = placement_day_outcomes(
        start=start, end=end, events_from=start - EVENT_CLOCK_SLACK, outcome_types=OUTCOME_TYPES
    )
    rows = [
        PlacementDay(
            placement=row.placement,
            day=row.day,
            impressions=row.impressions,
            clicks=row.clicks,
            add_to_carts=row.add_to_carts,
            purchases=row.purchases,
            revenue=row.revenue,
        )
        for row in outcomes
    ]
    return PlacementKpis(first_day=first_day, last_day=last_day, rows=rows)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile estimated from cumulative buckets `(upper bound, count)` as Prometheus does: linear
    interpolation inside the bucket the rank falls in (the first bucket starts at 0); a rank in the +Inf bucket
    gives the highest finite bound. None when nothing was observed."""
    ordered = sorted(buckets)
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    total = ordered[-1][1]
    if total == 0 or math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    rank = q * total
    index = next((i for i, (_, count) in enumerate(ordered[:-1]) if count >= rank), len(ordered) - 1)
    if index == len(ordered) - 1:
        return ordered[-2][0] if len(ordered) > 1 else None
    upper, count = ordered[index]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0
    if index > 0:
        lower, below = ordered[index - 1]
        count -= below
        rank -= below
    return lower + (upper - lower) * (rank / count) if count else upper


@dataclass
class _Histogram:
    buckets: dict[float, float] = field(default_factory=dict)
    count: float = 0.0
    sum: float = 0.0

    def quantile(self, q: float) -> float | None:
        return histogram_quantile(q, list(self.buckets.items()))


@dataclass(frozen=True)
class LayerLatency:
    layer: str
    label: str
    requests: int
    p50_seconds: float | None
    p99_seconds: float | None
    mean_seconds: float | None


@dataclass(frozen=True)
class DegradedReason:
    reason: str
    responses: int
    rate: float | None  # over every slate served


@dataclass(frozen=True)
class FeatureAge:
    feature: str
    reads: int
    p50_seconds: float | None
    p99_seconds: float | None


@dataclass(frozen=True)
class ServingMetrics:
    """What the serving processes measured since they started."""

    layers: list[LayerLatency]
    slates: int
    slates_by_placement: dict[str, int]
    degraded: list[DegradedReason]
    feature_ages: list[FeatureAge]
    merged_workers: bool


Sample = tuple[str, dict[str, str], float]


def _samples(registry: Any) -> Iterable[Sample]:
    for family in registry.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _histograms(samples: list[Sample], name: str, label: str | None) -> dict[str, _Histogram]:
    found: dict[str, _Histogram] = defaultdict(_Histogram)
    for sample_name, labels, value in samples:
        key = labels.get(label, "") if label else ""
        if sample_name == f"{name}_bucket":
            histogram = found[key]
            bound = float(labels["le"])
            histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + value
        elif sample_name == f"{name}_count":
            found[key].count += value
        elif sample_name == f"{name}_sum":
            found[key].sum += value
    return found


def _counter(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for sample_name, labels, value in samples:
        if sample_name == f"{name}_total":
            totals[labels.get(label, "")] += value
    return totals


def _layer(layer: str, label: str, histogram: _Histogram | None) -> LayerLatency:
    if histogram is None or not histogram.count:
        return LayerLatency(layer, label, 0, None, None, None)
    return LayerLatency(
        layer=layer,
        label=label,
        requests=int(histogram.count),
        p50_seconds=histogram.quantile(0.5),
        p99_seconds=histogram.quantile(0.99),
        mean_seconds=histogram.sum / histogram.count,
    )


def serving_metrics_read(*, registry: Any = None) -> ServingMetrics:
    """Latency per layer, degraded responses by reason and feature ages, from one collection of `registry`
    (default: the one /metrics exposes, every gunicorn worker merged)."""
    samples = list(_samples(registry if registry is not None else _metrics_registry()))
    serving = _histograms(samples, "serving_layer_seconds", "layer")
    ingest = _histograms(samples, "signals_ingest_seconds", None)
    layers = [_layer(layer, label, serving.get(layer)) for layer, label in SERVING_LAYERS]
    layers.append(_layer(*SIGNAL_LAYER, ingest.get("")))

    by_placement = {
        placement: int(count) for placement, count in _counter(samples, "surface_slates", "placement").items()
    }
    slates = sum(by_placement.values())
    degraded = [
        DegradedReason(reason=reason, responses=int(count), rate=_ratio(count, slates))
        for reason, count in sorted(_counter(samples, "surface_degraded", "reason").items(), key=lambda kv: -kv[1])
        if count
    ]
    feature_ages = [
        FeatureAge(feature, int(histogram.count), histogram.quantile(0.5), histogram.quantile(0.99))
        for feature, histogram in sorted(_histograms(samples, "feature_age_seconds", "feature").items())
        if histogram.count
    ]
    return ServingMetrics(
        layers=layers,
        slates=slates,
        slates_by_placement=dict(sorted(by_placement.items())),
        degraded=degraded,
        feature_ages=feature_ages,
        merged_workers=registry is None and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
    )


@dataclass(frozen=True)
class ModelAge:
    kind: str
    version: str
    state: str
    created_at: datetime
    age_seconds: float
    canary_percent: int


@lag_tolerant_reads()
def model_age_list(*, now: datetime | None = None) -> list[ModelAge]:
    """The serving model versions (active and canary, per kind) and how long ago each was trained."""
    now = now or timezone.now()
    rows = sorted(model_versions_serving(), key=lambda row: (row.kind, row.state))
    return [
        ModelAge(
            kind=row.kind,
            version=row.version,
            state=row.state,
            created_at=row.created_at,
            age_seconds=(now - row.created_at).total_seconds(),
            canary_percent=row.canary_percent,
        )
        for row in rows
    ]
