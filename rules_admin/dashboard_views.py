"""The console's dashboard: per-placement KPIs per day, latency per layer, degraded responses, model and feature
age. Reads come from `dashboard_selectors`, the charts' geometry from `dashboard_charts`; the page draws them as
inline SVG (no script, no CDN)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from rules_admin import dashboard_charts as charts
from rules_admin.dashboard_selectors import PlacementDay, model_age_list, placement_kpis_list, serving_metrics_read
from surface_app.interface import placement_names

WINDOWS = (7, 14, 30)
DEFAULT_WINDOW = 14
VIEW_PERMISSION = "graph_app.view_impression"
NO_VALUE = "n/a"  # a rate without impressions, a quantile without observations


def _window(request: HttpRequest) -> int:
    try:
        days = int(request.GET.get("days", DEFAULT_WINDOW))
    except ValueError:
        return DEFAULT_WINDOW
    return days if days in WINDOWS else DEFAULT_WINDOW


def _shown(value: float | None, fmt: charts.Format) -> str:
    return fmt(value) if value is not None else NO_VALUE


def _kpi_cells(row: PlacementDay) -> dict[str, str]:
    def rate(value: float | None) -> str:
        return _shown(value, charts.format_percent)

    return {
        "impressions": f"{row.impressions:,}",
        "clicks": f"{row.clicks:,}",
        "ctr": rate(row.ctr),
        "add_to_carts": f"{row.add_to_carts:,}",
        "add_to_cart_rate": rate(row.add_to_cart_rate),
        "purchases": f"{row.purchases:,}",
        "purchase_rate": rate(row.purchase_rate),
        "revenue": charts.format_money(row.revenue),
        "rpm": _shown(row.rpm, charts.format_money),
    }


@staff_member_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def dashboard(request: HttpRequest) -> HttpResponse:
    days = _window(request)
    today = timezone.now().date()  # settings.TIME_ZONE is UTC: the SQL's days are UTC days too
    kpis, unknown_placements = placement_kpis_list(first_day=today - timedelta(days=days - 1), last_day=today).split(
        placement_names()
    )
    grid = kpis.grid()

    def per_placement(measure: str) -> dict[str, list[float | None]]:
        return {placement: [getattr(row, measure) for row in rows] for placement, rows in grid.items()}

    kpi_charts = [
        charts.line_chart(key=key, title=title, days=kpis.days, series=per_placement(measure), fmt=fmt)
        for key, title, measure, fmt in (
            ("impressions", "Impressions", "impressions", charts.format_count),
            ("ctr", "Click-through rate", "ctr", charts.format_percent),
            ("add_to_cart_rate", "Add-to-cart rate", "add_to_cart_rate", charts.format_percent),
            ("purchase_rate", "Purchase rate", "purchase_rate", charts.format_percent),
            ("rpm", "Revenue per thousand impressions", "rpm", charts.format_money),
        )
    ]

    metrics = serving_metrics_read()
    latency_chart = charts.bar_chart(
        key="latency",
        title="p50 and p99 per layer",
        rows=[(layer.layer, layer.label, (layer.p50_seconds, layer.p99_seconds)) for layer in metrics.layers],
        measures=("p50", "p99"),
        fmt=charts.format_milliseconds,
    )
    degraded_chart = charts.bar_chart(
        key="degraded",
        title="Share of slates, by reason",
        rows=[(reason.reason, reason.reason, (reason.rate,)) for reason in metrics.degraded],
        measures=("share of slates",),
        fmt=charts.format_percent,
    )
    feature_chart = charts.bar_chart(
        key="feature_age",
        title="p50 and p99 age when read, per feature",
        rows=[(age.feature, age.feature, (age.p50_seconds, age.p99_seconds)) for age in metrics.feature_ages],
        measures=("p50", "p99"),
        fmt=charts.format_age,
    )
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "days": days,
        "windows": WINDOWS,
        "kpis": kpis,
        "kpi_charts": kpi_charts,
        "kpi_rows": [
            (row, _kpi_cells(row)) for row in sorted(kpis.rows, key=lambda r: (-r.day.toordinal(), r.placement))
        ],
        "kpi_totals": [(row, _kpi_cells(row)) for row in kpis.totals()],
        "unknown_placements": unknown_placements,
        "metrics": metrics,
        "layer_rows": [
            (
                layer,
                {
                    name: _shown(value, charts.format_milliseconds)
                    for name, value in (
                        ("p50", layer.p50_seconds),
                        ("p99", layer.p99_seconds),
                        ("mean", layer.mean_seconds),
                    )
                },
            )
            for layer in metrics.layers
        ],
        "latency_chart": latency_chart,
        "degraded_chart": degraded_chart,
        "degraded_rows": [(reason, _shown(reason.rate, charts.format_percent)) for reason in metrics.degraded],
        "feature_chart": feature_chart,
        "feature_rows": [
            (
                age,
                _shown(age.p50_seconds, charts.format_age),
                _shown(age.p99_seconds, charts.format_age),
            )
            for age in metrics.feature_ages
        ],
        "models": [(model, charts.format_age(model.age_seconds)) for model in model_age_list()],
    }
    return render(request, "rules_admin/dashboard.html", context)
