"""The console dashboard: per-placement KPIs per day from the impression and event logs, latency quantiles,
degraded rates and feature age from Prometheus histograms and counters, model age, and who may see the page."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta

import factory
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram

from graph_app.model_registry.models import ModelVersion
from graph_app.state import log_reads
from graph_app.state.models import Impression
from rules_admin.dashboard_charts import format_percent, line_chart, nice_ceiling
from rules_admin.dashboard_selectors import (
    DegradedReason,
    FeatureAge,
    PlacementDay,
    histogram_quantile,
    model_age_list,
    placement_kpis_list,
    serving_metrics_read,
)
from surface_app.serving import slates
from tests.factories import EventFactory, ItemFactory

pytestmark = pytest.mark.django_db

DASHBOARD_URL = "/admin/console/dashboard/"


class ImpressionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Impression

    request_id = factory.Sequence(lambda n: f"slate-{n}")
    user_key = "u:user-1"
    placement = "home"
    item_id = "sku-1"
    slot = 0
    served_at = factory.LazyFunction(timezone.now)


def _at(day, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def _outcome(impression: Impression, event_type: str, *, value: float | None = None, **fields):
    """An event the consumer attributed to the impression's slot."""
    defaults = {
        "type": event_type,
        "item_id": impression.item_id,
        "request_id": impression.request_id,
        "placement": impression.placement,
        "attributed_placement": impression.placement,
        "attributed_slot": impression.slot,
        "value": value,
        "occurred_at": impression.served_at + timedelta(minutes=2),
    }
    return EventFactory(**{**defaults, **fields})


@pytest.fixture
def days():
    today = timezone.now().date()
    return today - timedelta(days=1), today


@pytest.fixture
def served(days):
    """Yesterday home showed two slates of two items; today home one slate of two, cart one of one."""
    yesterday, today = days
    ItemFactory(external_id="priced", price="9.99")
    a0 = ImpressionFactory(request_id="a", slot=0, item_id="sku-1", served_at=_at(yesterday, 10))
    ImpressionFactory(request_id="a", slot=1, item_id="sku-2", served_at=_at(yesterday, 10))
    ImpressionFactory(request_id="b", slot=0, item_id="sku-3", served_at=_at(yesterday, 18))
    b1 = ImpressionFactory(request_id="b", slot=1, item_id="priced", served_at=_at(yesterday, 18))
    ImpressionFactory(request_id="c", slot=0, served_at=_at(today, 0))
    ImpressionFactory(request_id="c", slot=1, item_id="sku-2", served_at=_at(today, 0))
    cart = ImpressionFactory(request_id="d", placement="cart", slot=0, served_at=_at(today, 0))

    _outcome(a0, "click")
    _outcome(a0, "click", occurred_at=a0.served_at + timedelta(minutes=5))  # the same impression clicked again
    _outcome(a0, "add_to_cart")
    _outcome(a0, "purchase", value=20.0)
    _outcome(b1, "click")
    _outcome(b1, "purchase")  # no value: the item's price
    _outcome(cart, "purchase", value=5.0)

    # Not counted: a view; a purchase with the slate's request id of an item not shown in it; an event without a
    # slate; a day outside the window and its click.
    _outcome(a0, "view")
    EventFactory(type="purchase", item_id="sku-9", request_id="a", attributed_placement="home", value=100.0)
    EventFactory(type="click", item_id="sku-1", value=None)
    old = ImpressionFactory(request_id="old", slot=0, served_at=_at(yesterday - timedelta(days=20), 12))
    _outcome(old, "click", occurred_at=_at(yesterday, 9))


def test_placement_kpis_are_exact_per_placement_and_day(served, days, django_assert_num_queries):
    yesterday, today = days

    with django_assert_num_queries(1):
        kpis = placement_kpis_list(first_day=yesterday, last_day=today)

    assert kpis.rows == [
        PlacementDay(
            "home", yesterday, impressions=4, clicks=2, add_to_carts=1, purchases=2, revenue=pytest.approx(29.99)
        ),
        PlacementDay("cart", today, impressions=1, clicks=0, add_to_carts=0, purchases=1, revenue=5.0),
        PlacementDay("home", today, impressions=2, clicks=0, add_to_carts=0, purchases=0, revenue=0.0),
    ]
    home_yesterday = kpis.rows[0]
    assert home_yesterday.ctr == 0.5
    assert home_yesterday.add_to_cart_rate == 0.25
    assert home_yesterday.purchase_rate == 0.5
    assert home_yesterday.rpm == pytest.approx(7497.5)
    assert kpis.rows[1].rpm == 5000.0
    assert kpis.rows[2].ctr == 0.0 and kpis.rows[2].rpm == 0.0


def test_placement_grid_fills_days_without_impressions(served, days):
    yesterday, today = days

    kpis = placement_kpis_list(first_day=yesterday - timedelta(days=2), last_day=today)

    assert kpis.days == [yesterday - timedelta(days=2), yesterday - timedelta(days=1), yesterday, today]
    grid = kpis.grid()
    assert [row.impressions for row in grid["cart"]] == [0, 0, 0, 1]
    assert [row.ctr for row in grid["cart"]] == [None, None, None, 0.0]
    assert [row.impressions for row in grid["home"]] == [0, 0, 4, 2]
    assert kpis.totals() == [
        PlacementDay("cart", yesterday - timedelta(days=2), 1, 0, 0, 1, 5.0),
        PlacementDay("home", yesterday - timedelta(days=2), 6, 2, 1, 2, pytest.approx(29.99)),
    ]


def test_placement_kpis_query_is_served_by_indexes(served, days):
    """With sequential scans priced out, the plan reads both logs through indexes (a large log must not be read
    whole for a two-week window)."""
    yesterday, _ = days
    start = datetime.combine(yesterday, time.min, tzinfo=UTC)
    params = {
        "start": start,
        "end": start + timedelta(days=2),
        "events_from": start - timedelta(days=1),
        "types": ["click", "add_to_cart", "purchase"],
    }
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + log_reads._PLACEMENT_DAYS_SQL, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # The impression log is partitioned by day: each partition's copy of `impression_served_time` is named after it.
    assert "served_at_placement_idx on signals_app_impression_p" in plan, plan
    assert "Seq Scan on signals_app_impression" not in plan, plan
    assert "Seq Scan on signals_app_event" not in plan, plan


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.001, 0), (0.002, 40), (0.005, 100), (math.inf, 100)]

    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0025)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.00495)
    # In the first bucket the lower bound is 0; past the last finite bound, the last finite bound.
    assert histogram_quantile(0.5, [(0.1, 10), (math.inf, 10)]) == pytest.approx(0.05)
    assert histogram_quantile(0.99, [(0.1, 0), (0.5, 1), (math.inf, 10)]) == 0.5
    assert histogram_quantile(0.5, [(0.1, 0), (math.inf, 0)]) is None


def _registry_with_observations() -> CollectorRegistry:
    """The serving metrics as the platform defines them, with known observations."""
    registry = CollectorRegistry()
    layer = Histogram(
        "serving_layer_seconds", "layers", ["layer"], buckets=slates.LAYER_SECONDS._upper_bounds[:-1], registry=registry
    )
    for _ in range(40):
        layer.labels(layer="total").observe(0.0015)
    for _ in range(60):
        layer.labels(layer="total").observe(0.004)
    layer.labels(layer="surface").observe(0.0003)
    ingest = Histogram("signals_ingest_seconds", "ingest", buckets=(0.001, 0.002, 0.005), registry=registry)
    for seconds in (0.0015, 0.0015, 0.003, 0.003):
        ingest.observe(seconds)
    served = Counter("surface_slates_total", "slates", ["placement", "path"], registry=registry)
    served.labels(placement="home", path="ranker").inc(6)
    served.labels(placement="home", path="fallback").inc(2)
    served.labels(placement="cart", path="bandit").inc(2)
    degraded = Counter("surface_degraded_total", "degraded", ["reason"], registry=registry)
    degraded.labels(reason="deadline_exceeded").inc(2)
    degraded.labels(reason="score_late").inc(1)
    ages = Histogram("feature_age_seconds", "ages", ["feature"], buckets=(1, 10, 60), registry=registry)
    for seconds in (5, 5, 30, 30):
        ages.labels(feature="user_recent").observe(seconds)
    return registry


def test_serving_metrics_estimate_latency_quantiles_per_layer():
    metrics = serving_metrics_read(registry=_registry_with_observations())

    layers = {layer.layer: layer for layer in metrics.layers}
    assert [layer.layer for layer in metrics.layers] == [
        "graph_state", "score_retrieval", "score_ranking", "surface", "total", "signal_ingest",
    ]  # fmt: skip
    assert layers["total"].requests == 100
    assert layers["total"].p50_seconds == pytest.approx(0.0025)
    assert layers["total"].p99_seconds == pytest.approx(0.00495)
    assert layers["total"].mean_seconds == pytest.approx((40 * 0.0015 + 60 * 0.004) / 100)
    assert layers["surface"].p50_seconds == pytest.approx(0.00025)  # half of the first bucket, from 0
    assert layers["signal_ingest"].requests == 4
    assert layers["signal_ingest"].p50_seconds == pytest.approx(0.002)
    assert layers["signal_ingest"].p99_seconds == pytest.approx(0.002 + 0.003 * (3.96 - 2) / 2)
    assert layers["graph_state"].requests == 0 and layers["graph_state"].p99_seconds is None


def test_serving_metrics_degraded_rate_by_reason_and_feature_age():
    metrics = serving_metrics_read(registry=_registry_with_observations())

    assert metrics.slates == 10
    assert metrics.slates_by_placement == {"cart": 2, "home": 8}
    assert metrics.degraded == [
        DegradedReason(reason="deadline_exceeded", responses=2, rate=0.2),
        DegradedReason(reason="score_late", responses=1, rate=0.1),
    ]
    assert metrics.feature_ages == [FeatureAge("user_recent", 4, pytest.approx(10.0), pytest.approx(59.0))]


def test_serving_metrics_read_the_registry_metrics_exposes():
    before = {layer.layer: layer.requests for layer in serving_metrics_read().layers}

    for _ in range(3):
        slates.LAYER_SECONDS.labels(layer="score_ranking").observe(0.004)

    after = {layer.layer: layer.requests for layer in serving_metrics_read().layers}
    assert after["score_ranking"] == before["score_ranking"] + 3
    assert after["total"] == before["total"]


def _model(version: str, state: str, age: timedelta, now: datetime, **fields) -> ModelVersion:
    model = ModelVersion.objects.create(kind=ModelVersion.Kind.RANKER, version=version, state=state, **fields)
    ModelVersion.objects.filter(pk=model.pk).update(created_at=now - age)
    return model


def test_model_age_lists_the_serving_versions():
    now = timezone.now()
    _model("r-active", "active", timedelta(hours=6), now)
    _model("r-canary", "canary", timedelta(minutes=30), now, canary_percent=10)
    _model("r-candidate", "candidate", timedelta(minutes=5), now)

    ages = model_age_list(now=now)

    assert [(age.version, age.state, age.age_seconds, age.canary_percent) for age in ages] == [
        ("r-active", "active", 6 * 3600.0, 0),
        ("r-canary", "canary", 1800.0, 10),
    ]


def _staff(*, permitted: bool, is_staff: bool = True):
    user = get_user_model().objects.create_user("merch", password="pw", is_staff=is_staff)
    if permitted:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="graph_app", codename="view_impression")
        )
    return user


def test_dashboard_renders_its_charts_for_staff_with_the_permission(client, served, days):
    _model("r-active", "active", timedelta(hours=2), timezone.now())
    client.force_login(_staff(permitted=True))

    response = client.get(DASHBOARD_URL, {"days": 7})

    assert response.status_code == 200
    page = response.content.decode()
    assert reverse("console:dashboard") == DASHBOARD_URL
    for chart in ("impressions", "ctr", "add_to_cart_rate", "purchase_rate", "rpm", "latency"):
        assert f'data-chart="{chart}"' in page, chart
    # One day tick per day of the window on each of the five per-day charts.
    assert page.count('class="day" data-day=') == 5 * 7
    yesterday, _ = days
    assert f'data-placement="home" data-day="{yesterday.isoformat()}"' in page
    assert "7,497.50" in page  # home's RPM yesterday
    assert "r-active" in page
    assert "<script" not in page.split('id="content-main"')[1]  # the charts are plain SVG
    assert "cdn" not in page.lower()


def test_dashboard_refuses_staff_without_the_permission(client):
    client.force_login(_staff(permitted=False))

    assert client.get(DASHBOARD_URL).status_code == 403


def test_dashboard_sends_others_to_the_login(client):
    assert client.get(DASHBOARD_URL).status_code == 302

    client.force_login(_staff(permitted=True, is_staff=False))
    response = client.get(DASHBOARD_URL)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_line_chart_breaks_the_line_on_days_without_a_value(days):
    yesterday, today = days
    three_days = [yesterday - timedelta(days=1), yesterday, today]

    chart = line_chart(key="ctr", title="CTR", days=three_days, series={"home": [0.1, None, 0.4]}, fmt=format_percent)

    (home,) = chart.series
    assert [point.day for point in home.points] == [three_days[0].isoformat(), today.isoformat()]
    assert home.path.count("M") == 2 and "L" not in home.path
    assert [tick.label for tick in chart.y_ticks] == ["0.00%", "25.0%", "50.0%"]  # the axis tops at 0.5
    assert len(chart.days) == 3
    assert [nice_ceiling(value) for value in (0, 0.4, 3, 7497.5)] == [1.0, 0.5, 5, 10000]


def test_a_placement_name_that_is_not_configured_is_flagged_not_charted(client, served, days):
    """cart is served (with the defaults) but only home is configured: a typo of a storefront's, not a placement."""
    from surface_app.models import Placement

    Placement.objects.create(name="home")
    client.force_login(_staff(permitted=True))

    page = client.get(DASHBOARD_URL, {"days": 7}).content.decode()

    flagged = page.split('id="unknown-placements"')[1].split("</p>")[0]
    assert "<code>cart</code> (1 impressions)" in flagged
    assert 'data-placement="cart"' not in page and 'data-placement="home"' in page
