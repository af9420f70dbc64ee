"""Business rules after the model: their order, conflicts, windows and audiences; the snapshot serving uses."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from personalization.candidates import Candidate
from personalization.process_caches import process_caches_reset
from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.rules_compile import rules_snapshot_build
from surface_app.serving.rules import (
    CompiledRule,
    Condition,
    PlacementConfig,
    rules_apply,
    snapshot_current,
    snapshot_observe,
)
from tests.factories import EntityFactory, ItemEntityFactory, ItemFactory

NOW = 1_800_000_000.0


def rule(kind: str, name: str = "r", *, matches=None, priority=0, **fields) -> CompiledRule:
    defaults = {
        "placement": None, "valid_from": None, "valid_until": None, "audience": (), "factor": 2.0, "item_ids": (),
        "slot": None, "campaign": "",
    }  # fmt: skip
    defaults.update(fields)
    return CompiledRule(name=name, kind=kind, priority=priority, matches=matches, **defaults)


def ranked(*ids: str, category: str = "", brands: dict[str, str] | None = None) -> list[Candidate]:
    return [
        Candidate(item_id, 1.0 - index / 100, "similar", "", ("similar",), category=category,
                   brand=(brands or {}).get(item_id, ""))
        for index, item_id in enumerate(ids)
    ]  # fmt: skip


def apply(items, rules, *, config=None, traits=None, size=5, blocked=None, pinned=None):
    ordered, backfill, _ = rules_apply(
        items=items, rules=rules, config=config or PlacementConfig(name="home"), traits=traits or {}, now=NOW,
        blocked=blocked or (lambda item: None), pinned_facts=(pinned or {}).get, size=size,
    )  # fmt: skip
    return [item.item_id for item in [*ordered, *backfill]]


def test_without_rules_the_models_order_holds():
    assert apply(ranked("a", "b", "c"), []) == ["a", "b", "c"]


def test_filters_and_block_lists_remove_items_for_good():
    rules = [rule("filter", matches=frozenset({"b"})), rule("block", item_ids=("c",))]

    assert apply(ranked("a", "b", "c", "d"), rules) == ["a", "d"]


def test_a_boost_lifts_and_a_bury_sinks_matching_items_several_rules_multiply():
    items = ranked("a", "b", "c", "d")
    # d's rank score 1/4 times 5 passes a's 4/4; a factor of 3 would only tie it with b (ties keep the model's order).
    assert apply(items, [rule("boost", factor=5.0, matches=frozenset({"d"}))]) == ["d", "a", "b", "c"]
    items = ranked("a", "b", "c", "d")
    assert apply(items, [rule("bury", factor=10.0, matches=frozenset({"a"}))]) == ["b", "c", "d", "a"]
    items = ranked("a", "b", "c", "d")
    two_boosts = [
        rule("boost", "x", factor=1.5, matches=frozenset({"c"})),
        rule("boost", "y", factor=1.5, matches=frozenset({"c"})),
    ]
    assert apply(items, two_boosts) == ["c", "a", "b", "d"]


def test_pins_take_their_slot_and_the_higher_priority_wins_a_conflict():
    items = ranked("a", "b", "c", "d")
    pins = [
        rule("pin", "spring", priority=10, item_ids=("d",), slot=1, campaign="Spring"),
        rule("pin", "other", priority=1, item_ids=("c",), slot=1),
    ]

    result, _, _ = rules_apply(
        items=items, rules=pins, config=PlacementConfig(name="home"), traits={}, now=NOW,
        blocked=lambda item: None, pinned_facts={}.get, size=4,
    )  # fmt: skip

    assert [item.item_id for item in result] == ["d", "c", "a", "b"]
    assert result[0].explanation == "Pinned by campaign Spring"
    assert result[0].rules == ["pin:spring"]


def test_a_pinned_item_score_did_not_return_is_placed_but_a_filtered_one_is_not():
    outside = Candidate("promo", 0.0, "pin", "", ("pin",))
    pins = [rule("pin", item_ids=("promo",), slot=2)]

    assert apply(ranked("a", "b"), pins, pinned={"promo": outside}) == ["a", "promo", "b"]
    outside = Candidate("promo", 0.0, "pin", "", ("pin",))
    assert apply(ranked("a", "b"), [*pins, rule("block", item_ids=("promo",))], pinned={"promo": outside}) == [
        "a", "b",
    ]  # fmt: skip


def test_rules_outside_their_window_or_audience_do_nothing():
    later = rule("filter", matches=frozenset({"a"}), valid_from=NOW + 60)
    over = rule("filter", matches=frozenset({"a"}), valid_until=NOW)
    minors = rule("filter", matches=frozenset({"a"}), audience=(Condition("age", "lt", 18),))

    assert apply(ranked("a", "b"), [later, over, minors], traits={"age": 30}) == ["a", "b"]
    assert apply(ranked("a", "b"), [minors], traits={"age": 16}) == ["b"]


def test_diversity_moves_over_represented_categories_behind_the_rest():
    items = ranked("m1", "m2", "m3") + ranked("b1", category="bags")
    for item in items[:3]:
        item.category = "mugs"
    config = PlacementConfig(name="home", max_per_category=2)

    assert apply(items, [], config=config) == ["m1", "m2", "b1", "m3"]


def test_blocked_items_are_filtered_by_reason():
    assert apply(ranked("a", "b"), [], blocked=lambda item: "cap:daily" if item.item_id == "a" else None) == ["b"]


# The snapshot: compiled from the database, rebuilt when the version changes.

pytestmark_db = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_snapshot():
    process_caches_reset(["surface.rules_snapshot"])
    yield
    process_caches_reset(["surface.rules_snapshot"])


@pytestmark_db
def test_the_snapshot_compiles_conditions_into_item_sets():
    ItemFactory(external_id="wine", category="drinks", attributes={"age_restricted": True}, price="20.00")
    ItemFactory(external_id="juice", category="drinks", attributes={"age_restricted": False}, price="3.00")
    acme = EntityFactory(kind="brand", external_id="acme")
    ItemEntityFactory(item=ItemFactory(external_id="anvil", category="tools"), entity=acme)
    home = Placement.objects.create(name="home", size=6, max_per_category=2)
    BusinessRule.objects.create(
        name="No alcohol for minors", kind="filter", condition={"field": "attributes.age_restricted", "op": "eq",
                                                                 "value": True},
        audience={"field": "traits.age", "op": "lt", "value": 18},
    )  # fmt: skip
    BusinessRule.objects.create(name="Acme week", kind="boost", placement=home, factor=3,
                                condition={"field": "brand", "op": "eq", "value": "acme"})  # fmt: skip
    BusinessRule.objects.create(name="Cheap", kind="bury", condition={"field": "price", "op": "lt", "value": 5})
    BusinessRule.objects.create(
        name="Expired", kind="filter", valid_until=timezone.now() - timedelta(days=1), condition={}
    )
    FrequencyCap.objects.create(name="3 a day", scope="item", max_impressions=3, window_seconds=86400)

    snapshot = rules_snapshot_build()

    by_name = {compiled.name: compiled for compiled in snapshot.rules}
    assert set(by_name) == {"No alcohol for minors", "Acme week", "Cheap"}
    assert by_name["No alcohol for minors"].matches == frozenset({"wine"})
    assert by_name["No alcohol for minors"].audience == (Condition("age", "lt", 18),)
    assert by_name["Acme week"].matches == frozenset({"anvil"})
    assert by_name["Cheap"].matches == frozenset({"juice"})
    assert snapshot.placement("home").max_per_category == 2
    assert [cap.name for cap in snapshot.placement("home").caps] == ["3 a day"]
    assert [cap.name for cap in snapshot.placement("elsewhere").caps] == ["3 a day"]  # global caps
    assert {compiled.name for compiled in snapshot.rules_for("cart")} == {"No alcohol for minors", "Cheap"}


@pytest.mark.django_db(transaction=True)  # the background rebuild reads committed rows on its own connection
def test_a_new_version_rebuilds_the_snapshot_without_a_restart():
    snapshot_observe(b"1")
    assert snapshot_current().rules == ()
    BusinessRule.objects.create(name="Hide x", kind="block", item_ids=["x"])

    snapshot_observe(b"1")  # same version: nothing to do
    assert snapshot_current().rules == ()
    # A new version: rebuilt in the background (once one exists), at most every REBUILD_MIN_INTERVAL_SECONDS;
    # requests keep observing it, as serving does.
    deadline = timezone.now() + timedelta(seconds=60)  # bounded, not timed: a busy machine may take long
    while snapshot_current().version != b"2" and timezone.now() < deadline:
        snapshot_observe(b"2")
        time.sleep(0.05)

    assert [compiled.name for compiled in snapshot_current().rules] == ["Hide x"]


@pytestmark_db
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "pin", "item_ids": ["a"], "slot": 9}, "slot"),
        ({"kind": "pin", "item_ids": [], "slot": 1}, "item_ids"),
        ({"kind": "filter", "condition": {"field": "colour", "op": "eq", "value": "red"}}, "condition"),
        ({"kind": "filter", "condition": {"field": "price", "op": "about", "value": 1}}, "condition"),
        ({"kind": "filter", "audience": {"field": "age", "op": "lt", "value": 18}}, "audience"),
        ({"kind": "boost", "factor": 0.5}, "factor"),
    ],
)
def test_a_rule_a_merchandiser_gets_wrong_is_refused_naming_the_field(fields, field):
    from django.core.exceptions import ValidationError

    home = Placement.objects.create(name="home", size=6)

    with pytest.raises(ValidationError) as refused:
        configuration.rule_save(rule=BusinessRule(name="x", placement=home, **fields))

    assert field in refused.value.message_dict
    assert not BusinessRule.objects.exists()


def test_removals_are_counted_by_reason_for_the_metrics():
    rules = [rule("block", item_ids=("c",)), rule("pin", "campaign", item_ids=("a",), slot=2)]
    _, _, removed = rules_apply(
        items=ranked("a", "b", "c", "d"), rules=rules, config=PlacementConfig(name="home"), traits={}, now=NOW,
        blocked=lambda item: "already_purchased" if item.item_id == "d" else None, pinned_facts={}.get, size=5,
    )  # fmt: skip

    assert removed == {"block": 1, "already_purchased": 1}
