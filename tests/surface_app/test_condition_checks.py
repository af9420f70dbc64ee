"""The condition builder's reads against a real catalog: suggestions from the catalog's values, the "matches N of M"
count with serving's semantics (exact, or an estimate when counting takes too long), and the values no item has,
with the catalog's spelling when only the case differs."""

from __future__ import annotations

import pytest
from django.db import connection

from graph_app import catalog_values
from surface_app.condition_checks import (
    MatchCount,
    ValueProblem,
    condition_match_count,
    condition_match_estimate,
    condition_suggestions,
    condition_value_problems,
)
from surface_app.rules_compile import conditions_parse, item_matches
from tests.factories import EntityFactory, ItemEntityFactory, ItemFactory, ShopperFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog():
    acme = EntityFactory(kind="brand", external_id="Acme")
    EntityFactory(kind="brand", external_id="Ghost")  # a brand no item has
    ItemFactory(external_id="pen", category="stationery", price="2.50", attributes={"colour": "red", "size": 5})
    ItemFactory(external_id="pad", category="stationery", price="4.00", in_stock=False, attributes={"colour": "Blue"})
    ItemEntityFactory(item=ItemFactory(external_id="mug", category="mugs", price="8.00"), entity=acme)
    ItemFactory(external_id="cup", category="mugs", price="12.00", attributes={"age_restricted": True})
    ItemFactory(external_id="bag", category="Stationery bags", price="30.00", attributes={"size": "5"})
    return acme


def values(field: str, prefix: str = "") -> list[object]:
    return [found.value for found in condition_suggestions(field=field, prefix=prefix)]


def test_categories_are_suggested_by_prefix_in_any_case_each_once(catalog, django_assert_num_queries):
    with django_assert_num_queries(1):  # a walk of the category index, not a read of the items
        found = values("category", "STAT")

    assert sorted(found) == ["Stationery bags", "stationery"]  # in the index's order, which is the collation's
    assert sorted(values("category")) == ["Stationery bags", "mugs", "stationery"]
    assert values("category", "x%") == []  # the prefix's wildcards are literal


def test_brands_are_suggested_only_when_an_item_has_them(catalog):
    assert values("brand") == ["Acme"]
    assert values("brand", "ac") == ["Acme"]


def test_attribute_names_come_with_their_values_kind_and_values_as_stored(catalog):
    names = {found.value: found.label for found in condition_suggestions(field="attributes")}

    assert names == {"age_restricted": "boolean", "colour": "string", "size": "mixed"}
    assert values("attributes.colour") == ["Blue", "red"]
    assert values("attributes.colour", "r") == ["red"]
    assert values("attributes.size") == [5, "5"]  # a number and a text differ in a condition
    assert values("attributes.age_restricted") == [True]


def test_trait_names_for_an_audience_come_from_the_newest_users_with_their_values_kind(
    monkeypatch, django_assert_num_queries
):
    ShopperFactory(traits={"age": 41, "plan": "gold", "vip": True})
    ShopperFactory(traits={"age": 16, "plan": 3, "group.plan": "enterprise"})
    ShopperFactory(traits={})

    with django_assert_num_queries(1):
        names = {found.value: found.label for found in condition_suggestions(field="traits")}

    assert names == {"age": "number", "group.plan": "string", "plan": "mixed", "vip": "boolean"}
    assert values("traits", "PL") == ["plan"]
    # Bounded: only the newest users are read (the first one's "vip" is left out).
    monkeypatch.setattr(catalog_values, "RECENT_USERS_SAMPLE", 2)
    assert values("traits") == ["age", "group.plan", "plan"]


def test_price_points_are_the_spread_of_prices(catalog):
    points = [(found.value, found.label) for found in condition_suggestions(field="price")]

    assert points == [
        (2.5, "lowest price"),
        (4.0, "a quarter of items cost less"),
        (8.0, "median price"),
        (12.0, "three quarters of items cost less"),
        (30.0, "highest price"),
    ]


@pytest.mark.parametrize(
    "condition",
    [
        {"field": "category", "op": "eq", "value": "stationery"},
        {"field": "category", "op": "in", "value": ["mugs", "stationery"]},
        {"field": "category", "op": "contains", "value": "STAT"},
        {"field": "price", "op": "lt", "value": 5},
        {"field": "price", "op": "gte", "value": 8},
        {"field": "brand", "op": "eq", "value": "Acme"},
        {"field": "brand", "op": "ne", "value": "Acme"},
        {"field": "in_stock", "op": "eq", "value": False},
        {"field": "attributes.colour", "op": "eq", "value": "red"},
        {"field": "attributes.age_restricted", "op": "eq", "value": True},
        [{"field": "category", "op": "eq", "value": "stationery"}, {"field": "in_stock", "op": "eq", "value": True}],
    ],
)
def test_the_count_is_what_serving_compiles(catalog, condition):
    conditions = conditions_parse(condition)

    counted = condition_match_count(conditions=conditions)

    assert counted == MatchCount(matches=len(item_matches(conditions) or ()), total=5, estimated=False)


def test_no_condition_matches_every_item(catalog):
    assert condition_match_count(conditions=()) == MatchCount(matches=5, total=5)


def test_a_catalog_within_the_sample_is_counted_whole_and_exactly(catalog):
    mugs = conditions_parse({"field": "category", "op": "eq", "value": "mugs"})

    assert condition_match_estimate(conditions=mugs) == MatchCount(matches=2, total=5, estimated=False)


def test_a_count_over_its_time_budget_falls_back_to_the_estimate():
    with connection.cursor() as cursor:  # 100,000 items, a quarter of them cheap
        cursor.execute(
            "INSERT INTO graph_app_item (external_id, title, description, category, price, in_stock, attributes, "
            "embedding_source, created_at, updated_at) "
            "SELECT 'bulk-' || n, 'Item ' || n, '', 'bulk', CASE WHEN n % 4 = 0 THEN 1 ELSE 20 END, true, '{}', '', "
            "now(), now() FROM generate_series(1, 100000) n"
        )

    counted = condition_match_count(
        conditions=conditions_parse({"field": "price", "op": "lt", "value": 5}), budget_ms=1
    )

    assert counted.estimated
    assert 0.9 * 25_000 <= counted.matches <= 1.1 * 25_000, counted
    assert counted.total == 100_000  # every sampled id is used
    every_item = condition_match_estimate(
        conditions=conditions_parse({"field": "category", "op": "eq", "value": "bulk"})
    )
    assert every_item == MatchCount(matches=100_000, total=100_000, estimated=True)
    # The live check of values leaves out what takes longer than its budget; the save's check does not.
    nothing = conditions_parse({"field": "attributes.colour", "op": "eq", "value": "nothing"})
    assert condition_value_problems(conditions=nothing, budget_ms=1) == []
    assert condition_value_problems(conditions=nothing) == [ValueProblem("attributes.colour", "nothing", None)]
    # The budget was the count's alone: the connection's queries are not cut short afterwards.
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        assert cursor.fetchone()[0] == "0"


def problems(condition: object) -> list[ValueProblem]:
    return condition_value_problems(conditions=conditions_parse(condition))


def test_a_value_that_differs_only_in_case_is_named_with_the_catalogs_spelling(catalog):
    found = problems({"field": "category", "op": "eq", "value": "Stationery"})

    assert found == [ValueProblem("category", "Stationery", "stationery")]
    assert found[0].message == "No item in the catalog has the category 'Stationery': did you mean 'stationery'?"


def test_values_no_item_has_are_found_for_every_value_operator_and_field(catalog):
    assert problems({"field": "category", "op": "in", "value": ["mugs", "wine", "MUGS"]}) == [
        ValueProblem("category", "wine", None),
        ValueProblem("category", "MUGS", "mugs"),
    ]
    assert problems({"field": "brand", "op": "ne", "value": "acme"}) == [ValueProblem("brand", "acme", "Acme")]
    assert problems({"field": "brand", "op": "eq", "value": "Ghost"}) == [ValueProblem("brand", "Ghost", None)]
    assert problems({"field": "attributes.colour", "op": "eq", "value": "blue"}) == [
        ValueProblem("attributes.colour", "blue", "Blue")
    ]
    assert problems({"field": "attributes.age_restricted", "op": "eq", "value": "true"}) == [
        ValueProblem("attributes.age_restricted", "true", True)
    ]
    assert problems({"field": "attributes.age_restricted", "op": "eq", "value": True}) == []
    assert ValueProblem("attributes.size", 6, None).message == "No item in the catalog has attributes.size 6."


def test_values_the_catalog_has_and_other_operators_are_left_alone(catalog, django_assert_num_queries):
    present = [
        {"field": "category", "op": "eq", "value": "stationery"},
        {"field": "category", "op": "in", "value": ["mugs", "Stationery bags"]},
        {"field": "brand", "op": "eq", "value": "Acme"},
        {"field": "attributes.size", "op": "eq", "value": 5},
        {"field": "category", "op": "contains", "value": "nothing like it"},
        {"field": "price", "op": "eq", "value": 1234},
        {"field": "title", "op": "eq", "value": "no such title"},
    ]

    with django_assert_num_queries(4):  # one per field's value check, none per operator it leaves alone
        assert problems(present) == []


def test_the_case_spellings_read_the_catalog_boundedly(catalog, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert catalog_values.category_spellings(values=["STATIONERY"]) == ["stationery"]
    with django_assert_num_queries(1):
        assert catalog_values.categories_missing(values=["mugs", "Mugs", "wine"]) == ["Mugs", "wine"]
