"""The rule form's condition builder on the server side: its console endpoints (staff only), the save-time check of
values no item has (the case above all), and blocking a category or brand in one step through the same services as
the admin's save."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from rules_admin.condition_widget import ConditionBuilderWidget
from surface_app import configuration
from surface_app.catalog_blocks import blockable_values, catalog_value_block
from surface_app.models import BusinessRule, Placement
from surface_app.rules_compile import rules_snapshot_build
from tests.factories import EntityFactory, ItemEntityFactory, ItemFactory, ShopperFactory
from tests.rules_admin.console_users import form_errors, rule_form

pytestmark = pytest.mark.django_db

RULE_ADD = "/admin/surface_app/businessrule/add/"
VALUES = "/admin/console/conditions/values/"
COUNT = "/admin/console/conditions/count/"
BLOCK = "/admin/console/conditions/block/"


@pytest.fixture
def catalog():
    acme = EntityFactory(kind="brand", external_id="Acme")
    ItemFactory(external_id="pen", category="stationery", price="2.50")
    ItemFactory(external_id="pad", category="stationery", price="4.00", in_stock=False)
    ItemEntityFactory(item=ItemFactory(external_id="mug", category="mugs", price="8.00"), entity=acme)
    return acme


@pytest.fixture
def viewer_client(django_user_model) -> Client:
    """Staff who may view rules, not add them."""
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_businessrule"))
    client = Client()
    client.force_login(viewer)
    return client


def count(client: Client, condition: object) -> tuple[int, dict]:
    body = condition if isinstance(condition, str) else json.dumps(condition)
    response = client.post(COUNT, body, content_type="application/json")
    return response.status_code, response.json()


def test_the_rule_form_shows_the_builder_over_the_json_box_with_its_script_from_the_site(merchandiser_client):
    page = merchandiser_client.get(RULE_ADD).content.decode()

    assert 'data-condition-builder="id_condition"' in page
    assert '<textarea name="condition"' in page  # the box stays: the form submits it
    assert 'src="/static/rules_admin/condition_builder.js"' in page
    widget = ConditionBuilderWidget().render("condition", '{"field": "category"}', attrs={"id": "id_condition"})
    assert "<script" not in widget  # the page's policy runs no inline script


def test_the_audience_is_the_same_builder_on_traits_without_a_count(merchandiser_client):
    page = merchandiser_client.get(RULE_ADD).content.decode()

    builder = page[page.index('data-condition-builder="id_audience"') :]
    builder = builder[: builder.index("</template>")]
    assert 'data-mode="audience"' in builder
    assert "data-count-url" not in builder  # users, not items: a sentence says who, nothing is counted
    assert 'aria-label="Trait name"' in builder and 'data-role="kind"' in builder
    assert '<textarea name="audience"' in page
    assert page.count('src="/static/rules_admin/condition_builder.js"') == 1  # one script for both


def test_trait_names_are_suggested_to_staff(viewer_client):
    ShopperFactory(traits={"age": 41})

    assert viewer_client.get(VALUES, {"field": "traits"}).json() == {"values": [{"value": "age", "label": "number"}]}


def test_suggestions_and_counts_are_for_staff_only(client, catalog):
    assert client.get(VALUES, {"field": "category"}).status_code == 302  # to the login page
    assert client.post(COUNT, "{}", content_type="application/json").status_code == 302


def test_suggestions_are_the_catalogs_values(viewer_client, catalog):
    response = viewer_client.get(VALUES, {"field": "category", "q": "st"})

    assert response.json() == {"values": [{"value": "stationery", "label": ""}]}
    assert viewer_client.get(VALUES, {"field": "brand"}).json() == {"values": [{"value": "Acme", "label": ""}]}
    assert viewer_client.get(VALUES, {"field": "unknown"}).json() == {"values": []}


def test_the_count_says_how_many_items_match_and_which_values_no_item_has(viewer_client, catalog):
    assert count(viewer_client, {"field": "category", "op": "eq", "value": "stationery"}) == (
        200,
        {"matches": 2, "total": 3, "estimated": False, "problems": []},
    )
    assert count(viewer_client, [{"field": "category", "op": "eq", "value": "stationery"},
                                 {"field": "in_stock", "op": "eq", "value": True}])[1]["matches"] == 1  # fmt: skip
    assert count(viewer_client, "")[1]["matches"] == 3  # no condition: every item
    assert count(viewer_client, {"field": "category", "op": "eq", "value": "Stationery"}) == (
        200,
        {
            "matches": 0,
            "total": 3,
            "estimated": False,
            "problems": [
                {
                    "field": "category",
                    "value": "Stationery",
                    "suggestion": "stationery",
                    "message": "No item in the catalog has the category 'Stationery': did you mean 'stationery'?",
                }
            ],
        },
    )


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        ('{"field": "category"', "Not valid JSON"),
        ({"field": "category", "op": "like", "value": "x"}, "Unknown operator 'like'"),
        ({"field": "colour", "op": "eq", "value": "x"}, "Unknown item field 'colour'"),
        ({"field": "price", "op": "lt", "value": "cheap"}, "A value does not suit its field"),
    ],
)
def test_a_condition_that_cannot_be_counted_says_why(viewer_client, catalog, condition, error):
    status, body = count(viewer_client, condition)

    assert status == 400
    assert body["error"].startswith(error), body


def test_a_value_that_differs_from_the_catalogs_in_case_is_refused_on_save_naming_the_spelling(
    merchandiser_client, catalog
):
    condition = '{"field": "category", "op": "eq", "value": "Stationery"}'

    response = merchandiser_client.post(RULE_ADD, rule_form(kind="filter", condition=condition))

    assert form_errors(response) == {
        "condition": [
            "No item in the catalog has the category 'Stationery': did you mean 'stationery'? Values are compared "
            "exactly, case included: a rule on a value no item has matches nothing."
        ]
    }
    assert not BusinessRule.objects.exists()
    # Spelled as the catalog does, it saves the JSON as sent.
    response = merchandiser_client.post(RULE_ADD, rule_form(kind="filter", condition=condition.replace("S", "s", 1)))
    assert response.status_code == 302
    assert BusinessRule.objects.get().condition == {"field": "category", "op": "eq", "value": "stationery"}


def test_every_missing_value_is_named_after_an_unknown_attribute(catalog):
    rule = BusinessRule(
        name="r",
        kind="filter",
        condition=[
            {"field": "attributes.colur", "op": "eq", "value": "red"},
            {"field": "brand", "op": "in", "value": ["acme", "Nobody"]},
        ],
    )

    with pytest.raises(ValidationError) as raised:
        configuration.rule_validate(rule=rule)

    assert raised.value.message_dict == {
        "condition": [
            "No item in the catalog has the attribute 'colur': check the spelling of attributes.<name> (a rule on an "
            "unknown attribute matches nothing). No item in the catalog has the brand 'acme': did you mean 'Acme'? "
            "No item in the catalog has the brand 'Nobody'. Values are compared exactly, case included: a rule on a "
            "value no item has matches nothing."
        ]
    }


def test_blocking_a_category_is_one_filter_rule_that_serving_applies(catalog, merchandiser):
    home = Placement.objects.create(name="home", size=10)

    rule = catalog_value_block(field="category", value="stationery", placement=home, user=merchandiser)

    assert (rule.kind, rule.placement, rule.status, rule.condition) == (
        "filter", home, "published", {"field": "category", "op": "eq", "value": "stationery"}
    )  # fmt: skip
    assert rule.name == "Block category stationery (home)"
    assert rule.history.get().history_user == merchandiser
    compiled = next(compiled for compiled in rules_snapshot_build().rules if compiled.name == rule.name)
    assert (compiled.placement, compiled.matches) == ("home", frozenset({"pen", "pad"}))


def test_blocking_is_refused_for_a_value_no_item_has_a_field_not_blockable_or_a_block_already_there(catalog):
    catalog_value_block(field="brand", value="Acme", placement=None)

    refusals = []
    for field, value in [("brand", "Acme"), ("brand", "acme"), ("price", "5"), ("category", "")]:
        with pytest.raises(ValidationError) as raised:
            catalog_value_block(field=field, value=value, placement=None)
        refusals.append(" ".join(raised.value.messages))

    assert refusals == [
        "The brand 'Acme' is already blocked on every placement by the rule 'Block brand Acme (every placement)'.",
        "No item in the catalog has the brand 'acme': did you mean 'Acme'? Values are compared exactly, case "
        "included: a rule on a value no item has matches nothing.",
        "Only a category or a brand can be blocked in one step, not 'price'.",
        "Choose the category to block.",
    ]
    assert BusinessRule.objects.count() == 1


def test_a_block_on_a_placement_that_requires_review_is_a_draft_of_its_author(catalog, merchandiser):
    reviewed = Placement.objects.create(name="home", size=10, requires_review=True)

    rule = catalog_value_block(field="category", value="mugs", placement=reviewed, user=merchandiser)

    assert (rule.status, rule.drafted_by) == ("draft", merchandiser)


def test_the_block_page_lists_values_with_their_items_and_where_they_are_blocked(catalog, django_assert_num_queries):
    catalog_value_block(field="category", value="mugs", placement=None)

    # The values, their counts within a time budget (a savepoint, the timeout read, set and reset), the blocks.
    with django_assert_num_queries(8):
        listed = blockable_values(field="category")

    assert [(found.value, found.items, found.blocked_on) for found in listed] == [
        ("mugs", 1, ("every placement",)),
        ("stationery", 2, ()),
    ]


def test_the_block_page_blocks_in_one_post_and_says_so(merchandiser_client, catalog):
    home = Placement.objects.create(name="home", size=10)

    page = merchandiser_client.get(BLOCK, {"field": "category", "q": "st"})
    response = merchandiser_client.post(
        BLOCK, {"field": "category", "value": "stationery", "placement": home.pk, "q": "st"}, follow=True
    )

    assert [found.value for found in page.context["values"]] == ["stationery"]
    rule = BusinessRule.objects.get()
    assert (rule.kind, rule.placement, rule.condition) == (
        "filter", home, {"field": "category", "op": "eq", "value": "stationery"}
    )  # fmt: skip
    assert response.redirect_chain == [(f"{BLOCK}?field=category&q=st", 302)]
    messages = [str(message) for message in response.context["messages"]]
    assert messages == [
        f'Blocked with the filter rule <a href="{reverse("admin:surface_app_businessrule_change", args=[rule.pk])}">'
        "Block category stationery (home)</a>. Serving applies it within seconds."
    ]
    assert [found.blocked_on for found in response.context["values"]] == [("home",)]


def test_the_block_page_does_not_block_for_staff_who_may_not_add_rules(viewer_client, catalog):
    page = viewer_client.get(BLOCK)
    response = viewer_client.post(BLOCK, {"field": "category", "value": "mugs", "placement": ""}, follow=True)

    assert page.status_code == 200 and not page.context["can_block"]
    assert [str(message) for message in response.context["messages"]] == ["Blocking needs the permission to add rules."]
    assert not BusinessRule.objects.exists()
