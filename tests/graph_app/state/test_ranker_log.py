"""The ranker's logged pools: stored from the impression stream's records, read back for off-policy evaluation with
each evaluable slot's reward, erased with the shopper and pruned with the impression log."""

from __future__ import annotations

import base64
import time
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.utils import timezone

from graph_app.state.impression_log import impressions_store
from graph_app.state.log import event_log_append, impression_log_maintain
from graph_app.state.log_erasure import shopper_logs_erase
from graph_app.state.models import BanditDecision, Impression, RankerSlate
from graph_app.state.ranker_log import evaluable_slots, ranker_slates_logged
from graph_app.state.records import Attribution, EventInput, EventRecord
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

NAMES = ["item_popularity_7d", "item_price"]
POOL = ["sku-a", "sku-b", "sku-c"]
FEATURES = np.array([[3.0, 10.0], [2.0, np.nan], [1.0, 5.5]], dtype="<f4")


def record(request_id: str, *, served_at: float | None = None, shown=None, **extra: object) -> dict[str, object]:
    """A ranker slate as the serving path logs it: slots 0-1 drawn by the ranker (b then a), slot 2 the bandit's."""
    shown = shown if shown is not None else [[1, 0, 0, 0.6], [0, 1, 1, 0.5]]
    return {
        "request_id": request_id, "user_key": "u1", "placement": "home", "model_version": "ranker-1",
        "served_at": served_at or time.time(), "variant": "control", "path": "ranker",
        "items": [
            {"item_id": "sku-b", "slot": 0, "score": 0.5, "source": "popular", "logging_propensity": 0.6},
            {"item_id": "sku-a", "slot": 1, "score": 0.7, "source": "popular", "logging_propensity": 0.5},
            {"item_id": "sku-new", "slot": 2, "score": 0.2, "source": "fresh", "propensity": 0.25, "features": "x"},
        ],
        "bandit": {"shared": "s", "unshown": []},
        "ranker_pool": {
            "feature_names": NAMES, "item_ids": POOL, "features": base64.b64encode(FEATURES.tobytes()).decode(),
            "logging_scores": [0.7, 0.5, 0.1], "policy": {"share": 1.0, "temperature": 1.0, "pool": 3},
            "shown": shown,
        },
        **extra,
    }  # fmt: skip


def click(event_id: str, request_id: str, item_id: str, slot: int, type_: str = "click", value=None) -> EventRecord:
    now = timezone.now()
    event = EventInput(event_id, type_, "u1", "", item_id, "home", request_id, slot, value, {}, now)
    return EventRecord(event, now, Attribution(request_id, "home", slot, "ranker-1", 0.5, "popular"))


def test_the_ranker_s_propensities_and_pool_are_stored_apart_from_the_bandit_s():
    impressions_store(impressions=[record("r1")])

    rows = Impression.objects.filter(request_id="r1").order_by("slot")
    assert list(rows.values_list("item_id", "logging_propensity", "propensity")) == [
        ("sku-b", 0.6, None),
        ("sku-a", 0.5, None),
        ("sku-new", None, 0.25),
    ]
    pool = RankerSlate.objects.get(request_id="r1")
    assert (pool.placement, pool.model_version, pool.item_ids, pool.feature_names) == ("home", "ranker-1", POOL, NAMES)
    assert pool.shown == [[1, 0, 0, 0.6], [0, 1, 1, 0.5]]
    assert BanditDecision.objects.filter(request_id="r1").exists()

    impressions_store(impressions=[record("r1")])  # a replayed entry

    assert RankerSlate.objects.count() == 1


def test_a_logged_slate_reads_back_with_its_pool_and_each_slot_s_click():
    impressions_store(impressions=[record("r1", served_at=time.time() - 60), record("r2")])
    event_log_append(records=[click("c1", "r1", "sku-a", 1), click("c2", "r1", "sku-new", 2)])

    slates = ranker_slates_logged(
        placement="home", since=timezone.now() - timedelta(hours=1), until=timezone.now() + timedelta(minutes=1),
        max_slates=10,
    )  # fmt: skip

    assert [slate.request_id for slate in slates] == ["r2", "r1"]  # the most recent first
    first = slates[1]
    assert first.feature_names == tuple(NAMES) and first.item_ids == POOL
    np.testing.assert_array_equal(first.pool_features, FEATURES.astype(np.float64))
    assert first.shown.tolist() == [1, 0]
    assert first.propensities.tolist() == [0.6, 0.5]
    assert first.rewards.tolist() == [0.0, 1.0]  # the bandit's slot is not the ranker's to evaluate
    assert first.logging_scores.tolist() == [0.7, 0.5, 0.1]
    assert slates[0].rewards.tolist() == [0.0, 0.0]


def test_revenue_sums_the_purchases_attributed_to_the_slot_and_the_cap_keeps_the_most_recent():
    ItemFactory(external_id="sku-a", price=Decimal("12.50"))
    impressions_store(impressions=[record("r1", served_at=time.time() - 60), record("r2")])
    event_log_append(
        records=[
            click("p1", "r1", "sku-b", 0, "purchase", 20.0),
            click("p2", "r1", "sku-b", 0, "purchase", 5.0),
            click("p3", "r1", "sku-a", 1, "purchase"),  # no value: the item's price
        ]
    )
    window = {"since": timezone.now() - timedelta(hours=1), "until": timezone.now() + timedelta(minutes=1)}

    (latest,) = ranker_slates_logged(placement="home", max_slates=1, **window)
    both = ranker_slates_logged(placement="home", max_slates=5, reward="revenue", **window)

    assert latest.request_id == "r2"
    assert both[1].rewards.tolist() == [25.0, 12.5]
    assert ranker_slates_logged(placement="search", max_slates=5, **window) == []


def test_a_slot_moved_by_a_rule_ends_the_evaluable_part_of_the_slate():
    # Draw slots 0, 1, 2 served at 1, 2 and 4 (a pin took slot 3): slots 0-1 are evaluable; a context item led.
    assert evaluable_slots([[4, 0, 1, 0.9], [2, 1, 2, 0.4], [0, 2, 4, 0.3]]) == [(4, 0.9, 1), (2, 0.4, 2)]
    # Draw slot 0 filtered out (a rule): nothing is.
    assert evaluable_slots([[2, 1, 0, 0.4]]) == []


def test_pools_are_erased_with_the_shopper_and_pruned_with_the_impression_log():
    impressions_store(impressions=[record("r1"), record("r2", user_key="u2")])

    erased = shopper_logs_erase(user_id="u1", session_ids=[], user_keys=["u1"], request_ids=[])

    assert erased.ranker_slates == 1
    assert list(RankerSlate.objects.values_list("request_id", flat=True)) == ["r2"]

    report = impression_log_maintain(retention_days=1, now=timezone.now() + timedelta(days=2))

    assert report.ranker_slates_deleted == 1
    assert not RankerSlate.objects.exists()
