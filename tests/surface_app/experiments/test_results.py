"""An experiment's results from real impression and event rows: exact counts, rates and daily series per variant,
each shopper's pre-exposure activity, guardrails over slates, the sample-ratio alarm and the verdict's wording."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from django.utils import timezone

from graph_app.state.interface import experiment_outcomes
from graph_app.state.models import Impression
from surface_app.experiments.models import Experiment
from surface_app.experiments.results import experiment_results
from surface_app.experiments.services import experiment_create
from surface_app.models import Placement
from tests.factories import EventFactory, ItemFactory

pytestmark = pytest.mark.django_db

VARIANTS = [
    {"name": "control", "weight": 1, "treatment": {"kind": "current"}},
    {"name": "popular", "weight": 1, "treatment": {"kind": "popularity"}},
]


def _experiment(*, started_at: datetime, guardrails: dict[str, Any] | None = None) -> Experiment:
    Placement.objects.get_or_create(name="home", defaults={"size": 3})
    experiment = experiment_create(
        name="holdout", placement="home", primary_metric="ctr", variants=VARIANTS, guardrails=guardrails
    )
    Experiment.objects.filter(pk=experiment.pk).update(started_at=started_at)
    experiment.refresh_from_db()
    return experiment


def _slate(
    experiment: Experiment | None,
    variant: str,
    user_key: str,
    *,
    served_at: datetime,
    slots: int = 2,
    serving_ms: float | None = 10.0,
    degraded: bool = False,
    request_id: str | None = None,
    unit: str = "",
) -> list[Impression]:
    request_id = request_id or f"{variant}-{user_key}-{served_at.timestamp()}"
    return Impression.objects.bulk_create(
        Impression(
            request_id=request_id,
            user_key=user_key,
            placement="home",
            item_id=f"sku-{slot}",
            slot=slot,
            served_at=served_at,
            experiment_id=experiment.pk if experiment else None,
            experiment_variant=variant if experiment else "",
            experiment_unit=unit,
            serving_ms=serving_ms,
            degraded=degraded,
        )
        for slot in range(slots)
    )


def _outcome(impression: Impression, event_type: str, *, value: float | None = None, **fields: Any) -> None:
    """An event the consumer attributed to the impression's slot."""
    user = impression.user_key
    defaults = {
        "type": event_type,
        "user_id": "" if user.startswith("session:") else user,
        "session_id": user.removeprefix("session:") if user.startswith("session:") else "",
        "item_id": impression.item_id,
        "request_id": impression.request_id,
        "placement": "home",
        "attributed_placement": "home",
        "attributed_slot": impression.slot,
        "value": value,
        "occurred_at": impression.served_at + timedelta(minutes=2),
    }
    EventFactory(**{**defaults, **fields})


@pytest.fixture
def days() -> tuple[datetime, datetime]:
    today = timezone.now().date()
    return (datetime.combine(today - timedelta(days=1), time(9), tzinfo=UTC),
            datetime.combine(today, time(0, 30), tzinfo=UTC))  # fmt: skip


def _served(experiment: Experiment, days: tuple[datetime, datetime]) -> None:
    """control: u1 (two items yesterday, clicked twice and bought at 10 on slot 0, slot 1 added to cart) and the
    session s2 (two items today, nothing attributed); popular: u3 (two items today, slot 1 clicked and bought
    without a value: its price, 9.99) and u4 (one item today, degraded)."""
    yesterday, today = days
    ItemFactory(external_id="sku-1", price="9.99")
    a = _slate(experiment, "control", "u1", served_at=yesterday, serving_ms=10)
    b = _slate(experiment, "control", "session:s2", served_at=today, serving_ms=20)
    c = _slate(experiment, "popular", "u3", served_at=today, serving_ms=30)
    d = _slate(experiment, "popular", "u4", served_at=today, slots=1, serving_ms=100, degraded=True)
    _outcome(a[0], "click")
    _outcome(a[0], "click", occurred_at=yesterday + timedelta(minutes=5))
    _outcome(a[0], "purchase", value=10.0)
    _outcome(a[1], "add_to_cart")
    _outcome(c[1], "click")
    _outcome(c[1], "purchase")
    # Not the experiment's: an event without attribution, one on a slate outside it, a view.
    _outcome(b[0], "click", attributed_slot=None, attributed_placement="")
    other = _slate(None, "", "u9", served_at=today)
    _outcome(other[0], "click")
    _outcome(d[0], "view")
    # Before exposure: u1 clicked 3 days before, s2 added to cart and bought for 5 a week before; u3's click
    # 20 days before is outside the 14 days.
    _outcome(a[0], "click", request_id="", attributed_slot=None, occurred_at=yesterday - timedelta(days=3))
    for kind, value in (("add_to_cart", None), ("purchase", 5.0)):
        _outcome(b[0], kind, value=value, request_id="", attributed_slot=None, occurred_at=today - timedelta(days=7))
    _outcome(c[0], "click", request_id="", attributed_slot=None, occurred_at=today - timedelta(days=20))
    assert d


def test_outcomes_count_each_shoppers_attributed_events_and_pre_exposure_activity(days):
    experiment = _experiment(started_at=days[0] - timedelta(hours=1))
    _served(experiment, days)

    outcomes = {row.variant: row for row in experiment_outcomes(experiment_id=experiment.pk,
                                                                  served_from=experiment.started_at)}  # fmt: skip

    control, popular = outcomes["control"], outcomes["popular"]
    assert sorted(zip(control.impressions, control.clicks, control.add_to_carts, control.purchases, control.revenue,
                      control.pre_clicks, control.pre_add_to_carts, control.pre_purchases, control.pre_revenue,
                      strict=True)) == [(2, 0, 0, 0, 0.0, 0, 1, 1, 5.0), (2, 1, 1, 1, 10.0, 1, 0, 0, 0.0)]  # fmt: skip
    assert sorted(zip(popular.impressions, popular.clicks, popular.purchases, popular.revenue, popular.pre_clicks,
                      strict=True)) == [(1, 0, 0, 0.0, 0), (2, 1, 1, 9.99, 0)]  # fmt: skip
    assert [(day.day, day.impressions, day.clicks, day.add_to_carts, day.purchases, day.revenue)
            for day in control.days] == [(days[0].date(), 2, 1, 1, 1, 10.0),
                                         (days[1].date(), 2, 0, 0, 0, 0.0)]  # fmt: skip
    assert [(day.day, day.impressions, day.clicks) for day in popular.days] == [(days[1].date(), 3, 1)]
    assert (control.slates, control.p99_serving_ms, control.degraded_rate) == (2, pytest.approx(19.9), 0.0)
    assert (popular.slates, popular.p99_serving_ms, popular.degraded_rate) == (2, pytest.approx(99.3), 0.5)


def test_results_give_exact_totals_and_rates_per_variant(days):
    experiment = _experiment(started_at=days[0] - timedelta(hours=1))
    _served(experiment, days)

    results = experiment_results(experiment_id=experiment.pk)

    control, popular = results.variants
    assert (control.name, control.shoppers, control.impressions, control.clicks, control.add_to_carts,
            control.purchases, control.revenue) == ("control", 2, 4, 1, 1, 1, 10.0)  # fmt: skip
    assert (popular.name, popular.shoppers, popular.impressions, popular.clicks, popular.add_to_carts,
            popular.purchases, popular.revenue) == ("popular", 2, 3, 1, 0, 1, pytest.approx(9.99))  # fmt: skip
    assert control.rates["ctr"].value == 0.25 and control.rates["rpm"].value == 2500.0
    assert popular.rates["conversion_rate"].value == pytest.approx(1 / 3)
    assert popular.rates["rpm"].value == pytest.approx(3330.0)
    assert control.rates["ctr"].low < 0.25 < control.rates["ctr"].high
    assert [(lift.variant, lift.metric) for lift in results.primary_lifts] == [("popular", "ctr")]
    assert results.primary_lifts[0].plain.lift == pytest.approx((1 / 3) / 0.25 - 1)
    assert results.sample_ratio is not None and not results.sample_ratio.alarm
    assert results.verdict == "no difference yet" and results.summary.startswith("No difference yet on click")
    assert [(point.variant, point.day, point.impressions) for point in results.daily] == [
        ("control", days[0].date(), 2), ("control", days[1].date(), 2), ("popular", days[1].date(), 3),
    ]  # fmt: skip


def test_a_guardrail_breach_is_flagged_and_stops(days):
    experiment = _experiment(
        started_at=days[0] - timedelta(hours=1), guardrails={"serving_p99_ms": 50, "degraded_rate": 0.25}
    )
    _served(experiment, days)

    results = experiment_results(experiment_id=experiment.pk)

    assert [(breach.variant, breach.guardrail, breach.limit) for breach in results.guardrail_breaches] == [
        ("popular", "p99_ms", 50.0), ("popular", "degraded_rate", 0.25),
    ]  # fmt: skip
    assert results.verdict.startswith("guardrail breached: popular p99_ms 99.3 > 50")
    assert results.summary.startswith("Stop: a guardrail is breached")


def _shoppers(experiment: Experiment, variant: str, count: int, *, clicks: tuple[int, int], at: datetime) -> None:
    """`count` shoppers of ten impressions each, half clicking clicks[0] items, half clicks[1]."""
    for index in range(count):
        slate = _slate(experiment, variant, f"{variant}-{index}", served_at=at, slots=10)
        for impression in slate[: clicks[index % 2]]:
            _outcome(impression, "click")


def test_a_skewed_split_raises_the_srm_alarm_and_stops(days):
    experiment = _experiment(started_at=days[0] - timedelta(hours=1))
    Impression.objects.bulk_create(
        Impression(request_id=f"r-{variant}-{index}", user_key=f"{variant}-{index}", placement="home",
                   item_id="sku-0", slot=0, served_at=days[1], experiment_id=experiment.pk,
                   experiment_variant=variant, serving_ms=5.0)
        for variant, count in (("control", 100), ("popular", 50)) for index in range(count)
    )  # fmt: skip

    results = experiment_results(experiment_id=experiment.pk)

    assert results.sample_ratio is not None
    assert dict(results.sample_ratio.observed) == {"control": 100, "popular": 50}
    assert results.sample_ratio.alarm and results.sample_ratio.p_value < 0.001
    assert results.verdict == "stop: SRM" and results.summary.startswith("Stop: the variants' shares")


def test_a_clear_lift_names_the_winner(days):
    experiment = _experiment(started_at=days[0] - timedelta(hours=1))
    _shoppers(experiment, "control", 100, clicks=(0, 2), at=days[1])
    _shoppers(experiment, "popular", 100, clicks=(2, 4), at=days[1])

    results = experiment_results(experiment_id=experiment.pk)

    lift = results.primary_lifts[0]
    assert (results.variants[0].rates["ctr"].value, results.variants[1].rates["ctr"].value) == (0.1, 0.3)
    assert lift.plain.lift == pytest.approx(2.0) and lift.sequential.low > 0
    assert lift.sequential.low < lift.plain.low  # the always-valid interval is the wider
    assert lift.cuped is None  # nobody had activity before: nothing to adjust with
    assert results.verdict == "winner: popular"
    assert results.summary.startswith("popular wins on click-through rate: +200.0% over control")


def test_cuped_uses_pre_exposure_activity(days):
    experiment = _experiment(started_at=days[0] - timedelta(hours=1))
    _shoppers(experiment, "control", 20, clicks=(0, 2), at=days[1])
    _shoppers(experiment, "popular", 20, clicks=(1, 3), at=days[1])
    # The shoppers who click more now clicked before too: a covariate that explains part of the variance.
    for variant in ("control", "popular"):
        for index in range(1, 20, 2):
            EventFactory(type="click", user_id=f"{variant}-{index}", occurred_at=days[1] - timedelta(days=2))

    lift = experiment_results(experiment_id=experiment.pk).primary_lifts[0]

    assert lift.cuped is not None and lift.cuped_variance_reduction == pytest.approx(1.0)
    assert lift.cuped.log_ratio_std_error < lift.plain.log_ratio_std_error


def test_a_draft_has_empty_results(days):
    Placement.objects.create(name="home", size=3)
    draft = experiment_create(name="d", placement="home", primary_metric="rpm", variants=VARIANTS, start=False)

    results = experiment_results(experiment_id=draft.pk)

    assert [(variant.name, variant.shoppers, variant.impressions) for variant in results.variants] == [
        ("control", 0, 0), ("popular", 0, 0),
    ]  # fmt: skip
    assert (results.sample_ratio, results.daily, results.verdict) == (None, [], "no difference yet")


def test_a_shopper_who_signs_in_mid_experiment_counts_once_by_their_unit(days):
    yesterday, today = days
    experiment = _experiment(started_at=yesterday - timedelta(hours=1))
    # Served anonymously, then as the user they identified as: the session's key stays the unit.
    before = _slate(experiment, "control", "session:s7", served_at=yesterday, unit="session:s7")
    after = _slate(experiment, "control", "u7", served_at=today, unit="session:s7")
    _slate(experiment, "popular", "u8", served_at=today)  # logged without a unit: its user key counts
    _outcome(before[0], "click")
    _outcome(after[1], "click")

    outcomes = {row.variant: row for row in experiment_outcomes(experiment_id=experiment.pk,
                                                                  served_from=experiment.started_at)}  # fmt: skip

    control = outcomes["control"]
    assert (list(control.impressions), list(control.clicks)) == ([4], [2])
    assert list(outcomes["popular"].impressions) == [2]
