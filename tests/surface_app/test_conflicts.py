"""Rules and caps of a placement that defeat each other: each kind, who wins, and the placement without any."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from surface_app import configuration
from surface_app.conflicts import (
    BOOST_AND_BURY,
    ITEM_PINNED_TWICE,
    PIN_BEYOND_SHELF,
    PIN_BLOCKED,
    PIN_CAPPED,
    PIN_FILTERED,
    PIN_NOT_SERVABLE,
    PINS_SAME_SLOT,
    WEIGHT_FILTERED,
    PinnedItem,
    PlacedCap,
    PlacedRule,
    conflicts_find,
    placement_conflicts,
)
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.serving.caps import CapSpec
from surface_app.serving.rules import CompiledRule, Condition
from tests.factories import EntityFactory, ItemEntityFactory, ItemFactory

DAY = 86400.0
NOW = 1_800_000_000.0
TEA = PinnedItem("tea", title="Green tea", category="drinks", entities=("brand:leafy",))
ITEMS = {"tea": TEA}
_ids = iter(range(1, 1_000_000))


def rule(kind: str, name: str, *, matches=None, **fields) -> PlacedRule:
    """A compiled rule with its id (rules are given in serving order: the first wins a tie)."""
    values = {
        "priority": 0, "placement": "home", "valid_from": None, "valid_until": None, "audience": (), "factor": 2.0,
        "item_ids": (), "slot": None, "campaign": "",
    }  # fmt: skip
    values.update(fields)
    return PlacedRule(next(_ids), CompiledRule(name=name, kind=kind, matches=matches, **values))


def pin(name: str, item_id: str = "tea", slot: int = 1, **fields) -> PlacedRule:
    return rule("pin", name, item_ids=(item_id,), slot=slot, **fields)


def cap(name: str, scope: str = "item", max_impressions: int = 3) -> PlacedCap:
    return PlacedCap(next(_ids), CapSpec(scope, max_impressions, int(DAY), name))


def find(rules=(), caps=(), items=ITEMS, size: int = 10):
    return conflicts_find(rules=list(rules), caps=list(caps), pinned_items=items, placement_size=size)


def summary(conflicts) -> list[tuple[str, str | None, str]]:
    """(kind, winner, defeated) of each conflict."""
    return [
        (conflict.kind, conflict.winner and conflict.winner.label, conflict.defeated.label) for conflict in conflicts
    ]


def test_rules_and_caps_that_work_together_are_no_conflict():
    rules = [
        pin("Tea promo"),
        pin("Mug promo", "mug", slot=2, campaign="Mugs"),
        rule("filter", "No wine", matches=frozenset({"wine"})),
        rule("block", "No beer", item_ids=("beer",)),
        rule("boost", "Mugs up", matches=frozenset({"mug", "cup"})),
        rule("bury", "Hats down", matches=frozenset({"hat"})),
        rule("boost", "Everything", matches=None),  # touches every item: changes no order, nothing to defeat
    ]
    caps = [cap("Thrice a day"), cap("Two drinks", "category"), cap("Campaign once", "campaign", 1)]
    items = {**ITEMS, "mug": PinnedItem("mug", title="Mug", category="mugs")}

    assert find(rules, caps, items) == []  # the pins do not opt in to caps; the campaign cap is meant for them


def test_a_filter_that_matches_the_pinned_item_wins_over_the_pin_whatever_its_priority():
    rules = [pin("Tea promo", priority=10), rule("filter", "No drinks for minors", matches=frozenset({"tea", "wine"}),
                                                audience=(Condition("age", "lt", 18),))]  # fmt: skip

    (conflict,) = find(rules)

    assert summary([conflict]) == [(PIN_FILTERED, "filter 'No drinks for minors'", "pin 'Tea promo'")]
    assert conflict.message == (
        "Filter 'No drinks for minors' removes tea (Green tea), which pin 'Tea promo' puts at slot 1 for shoppers "
        "where age lt 18: the filter wins (filters and block lists apply before pins, whatever their priority)."
    )
    assert conflict.status == "removed by filter 'No drinks for minors' for shoppers where age lt 18"
    assert conflict.rules == (conflict.winner, conflict.defeated)


def test_a_filter_without_condition_removes_every_pin_and_a_block_list_the_items_it_lists():
    rules = [pin("Tea promo"), pin("Mug promo", "mug", slot=2), rule("filter", "Nothing at all", matches=None),
             rule("block", "No tea", item_ids=("tea", "beer"))]  # fmt: skip

    conflicts = [conflict for conflict in find(rules) if conflict.kind != PIN_NOT_SERVABLE]

    assert summary(conflicts) == [
        (PIN_FILTERED, "filter 'Nothing at all'", "pin 'Tea promo'"),
        (PIN_BLOCKED, "block list 'No tea'", "pin 'Tea promo'"),
        (PIN_FILTERED, "filter 'Nothing at all'", "pin 'Mug promo'"),
    ]


def test_rules_whose_windows_do_not_overlap_do_not_conflict():
    rules = [pin("Spring promo", valid_from=NOW, valid_until=NOW + DAY),
             rule("block", "Tea recall", item_ids=("tea",), valid_from=NOW + DAY)]  # fmt: skip

    assert find(rules) == []
    overlapping = [rules[0], rule("block", "Tea recall", item_ids=("tea",), valid_from=NOW + DAY - 1)]
    assert summary(find(overlapping)) == [(PIN_BLOCKED, "block list 'Tea recall'", "pin 'Spring promo'")]


def test_a_cap_defeats_a_pin_only_when_the_pin_opts_in_and_the_cap_counts_what_the_item_has():
    caps = [cap("Thrice a day"), cap("Two drinks", "category", 2), cap("One brand", "entity", 1),
            cap("Campaign once", "campaign", 1), cap("Shelf twice", "placement", 2)]  # fmt: skip

    assert find([pin("Tea promo")], caps) == []
    opted_in = find([pin("Tea promo", caps_apply=True)], caps)
    assert summary(opted_in) == [
        (PIN_CAPPED, "cap 'Thrice a day'", "pin 'Tea promo'"),
        (PIN_CAPPED, "cap 'Two drinks'", "pin 'Tea promo'"),
        (PIN_CAPPED, "cap 'One brand'", "pin 'Tea promo'"),
    ]
    assert opted_in[0].message == (
        "Cap 'Thrice a day' removes tea (Green tea), pinned by pin 'Tea promo', once a shopper has seen it 3 times "
        'within a day: the cap wins, as the pin opts in to frequency caps (untick "Frequency caps apply to this '
        'pin" to show it at every visit).'
    )
    assert opted_in[1].status == "removed after 2 items by cap 'Two drinks'"
    assert opted_in[0].winner.cap_id is not None and opted_in[0].defeated.rule_id is not None
    # An item without category or brand: only the item cap can remove it.
    plain = {"tea": PinnedItem("tea", title="Tea")}
    assert [c.winner.label for c in find([pin("Tea promo", caps_apply=True)], caps, plain)] == ["cap 'Thrice a day'"]


def test_a_boost_or_bury_on_items_a_filter_removes_is_flagged_all_or_partly():
    rules = [
        rule("filter", "No wine", matches=frozenset({"wine", "port"})),
        rule("block", "No port", item_ids=("port",)),
        rule("boost", "Wine week", matches=frozenset({"wine", "port"})),
        rule("bury", "Port down", matches=frozenset({"port", "cider", "ale"}), factor=3.0),
    ]

    conflicts = [conflict for conflict in find(rules) if conflict.kind == WEIGHT_FILTERED]

    assert [(c.winner.label, c.defeated.label, c.status) for c in conflicts] == [
        ("filter 'No wine'", "boost 'Wine week'", "does nothing: filter 'No wine' removes its items"),
        ("block list 'No port'", "boost 'Wine week'", "partly undone: block list 'No port' removes 1 of its 2 items"),
        ("filter 'No wine'", "bury 'Port down'", "partly undone: filter 'No wine' removes 1 of its 3 items"),
        ("block list 'No port'", "bury 'Port down'", "partly undone: block list 'No port' removes 1 of its 3 items"),
    ]
    assert conflicts[0].message == (
        "Filter 'No wine' removes all of the 2 items boost 'Wine week' touches: the filter wins (filters and block "
        "lists apply before boosts and buries)."
    )


def test_a_boost_and_a_bury_on_the_same_items_multiply_the_larger_factor_wins():
    boost = rule("boost", "Mugs up", matches=frozenset({"mug", "cup"}), factor=3.0)

    stronger_bury = find([boost, rule("bury", "Cups down", matches=frozenset({"cup"}), factor=6.0)])
    equal_bury = find([boost, rule("bury", "Cups down", matches=frozenset({"cup", "mug"}), factor=3.0)])

    assert summary(stronger_bury) == [(BOOST_AND_BURY, "bury 'Cups down'", "boost 'Mugs up'")]
    assert stronger_bury[0].message == (
        "Boost 'Mugs up' (factor 3) and bury 'Cups down' (factor 6) both touch 1 item: they multiply and the bury "
        "wins (net: down 2 times)."
    )
    assert summary(equal_bury) == [(BOOST_AND_BURY, None, "boost 'Mugs up'")]
    assert equal_bury[0].status == "cancelled out by bury 'Cups down'"


def test_pins_of_two_campaigns_on_one_slot_at_overlapping_times_the_higher_priority_wins():
    rules = [
        pin("Spring", "tea", priority=5, campaign="Spring", valid_until=NOW + DAY),
        pin("Summer", "mug", priority=1, campaign="Summer", valid_from=NOW),
        pin("Autumn", "cup", priority=1, campaign="Autumn", valid_from=NOW + DAY),  # after Spring: no overlap
    ]
    items = {**ITEMS, "mug": PinnedItem("mug"), "cup": PinnedItem("cup")}

    conflicts = find(rules, items=items)

    assert summary(conflicts) == [
        (PINS_SAME_SLOT, "pin 'Spring'", "pin 'Summer'"),
        (PINS_SAME_SLOT, "pin 'Summer'", "pin 'Autumn'"),
    ]
    assert conflicts[0].message == (
        "Pin 'Spring' and pin 'Summer' (campaign 'Spring' and campaign 'Summer') both take slot 1 at overlapping "
        "times: pin 'Spring' wins (higher priority, 5 over 1); pin 'Summer' moves to the next free slot."
    )
    assert conflicts[1].message.endswith("pin 'Summer' wins (same priority, changed more recently); pin 'Autumn' "
                                         "moves to the next free slot.")  # fmt: skip


def test_an_item_pinned_twice_is_placed_by_the_first_pin_only():
    conflicts = find([pin("Tea first", slot=1), pin("Tea again", slot=4)])

    assert summary(conflicts) == [(ITEM_PINNED_TWICE, "pin 'Tea first'", "pin 'Tea again'")]
    assert conflicts[0].status == "does nothing: pin 'Tea first' pins the same item"


def test_a_pin_of_an_unknown_or_out_of_stock_item_or_beyond_the_shelf_never_shows():
    items = {**ITEMS, "sold-out": PinnedItem("sold-out", in_stock=False)}
    rules = [pin("Ghost", "ghost", slot=1), pin("Sold out", "sold-out", slot=2), pin("Far", "tea", slot=12)]

    conflicts = find(rules, items=items, size=10)

    assert [(c.kind, c.defeated.label, c.winner, c.status) for c in conflicts] == [
        (PIN_NOT_SERVABLE, "pin 'Ghost'", None, "not shown: its item is not in the catalog"),
        (PIN_NOT_SERVABLE, "pin 'Sold out'", None, "not shown: its item is out of stock"),
        (PIN_BEYOND_SHELF, "pin 'Far'", None, "not shown: slot 12 is beyond the shelf"),
    ]


@pytest.mark.django_db
def test_a_placements_conflicts_are_found_from_its_rules_caps_and_catalog():
    tea = ItemFactory(external_id="tea", title="Green tea", category="drinks", attributes={"caffeine": True})
    ItemEntityFactory(item=tea, entity=EntityFactory(kind="brand", external_id="leafy"))
    ItemFactory(external_id="mug", title="Mug", category="mugs")
    home = Placement.objects.create(name="home", size=4)
    cart = Placement.objects.create(name="cart", size=4)
    save = configuration.rule_save
    save(rule=BusinessRule(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=1, caps_apply=True))
    save(rule=BusinessRule(name="No caffeine", kind="filter",
                           condition={"field": "attributes.caffeine", "op": "eq", "value": True}))  # fmt: skip
    save(rule=BusinessRule(name="Cart only", kind="block", placement=cart, item_ids=["tea"]))
    save(rule=BusinessRule(name="Old block", kind="block", item_ids=["tea"], enabled=False))
    save(rule=BusinessRule(name="Expired", kind="block", item_ids=["tea"], valid_until=timezone.now() - timedelta(1)))
    configuration.cap_save(cap=FrequencyCap(name="Brand once", scope="entity", max_impressions=1))
    configuration.cap_save(cap=FrequencyCap(name="Off", scope="item", max_impressions=1, enabled=False))

    conflicts = placement_conflicts(placement=home)

    assert summary(conflicts) == [
        (PIN_FILTERED, "filter 'No caffeine'", "pin 'Tea promo'"),
        (PIN_CAPPED, "cap 'Brand once'", "pin 'Tea promo'"),
    ]
    assert placement_conflicts(placement=cart) == []
