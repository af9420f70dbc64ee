"""The rule form's condition builder in a real browser (headless Chromium) against the real run command: a
merchandiser builds a condition from rows with values the catalog suggests, sees "matches N of M items" follow each
change, is warned of a value that differs from the catalog's only in case (and fixes it in one click), goes to JSON
and back, saves the same JSON as the box would; blocks a category in one step; and every rule of the documentation
and the benchmark's catalog opens as rows. The audience is the same builder on users' traits: "No alcohol for minors"
is built from rows alone. Nothing the page needs is blocked by its Content-Security-Policy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from rules_admin.roles import MERCHANDISER
from surface_app import configuration
from surface_app.models import BusinessRule, Placement
from tests.factories import EntityFactory, ItemEntityFactory, ItemFactory, ShopperFactory
from tests.integration_helpers import (
    BROWSER_TEST_PASSWORD,
    CHROMIUM,
    admin_log_in,
    chromium_launch,
    csp_violations_watch,
    platform_running,
)
from tests.rules_admin.console_users import console_user

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]

RULE_ADD = "/admin/surface_app/businessrule/add/"
BUILDER = "#id_condition_builder"
ROWS = f"{BUILDER} [data-role=row]"
COUNT = f"{BUILDER} [data-role=count]"
PROBLEMS = f"{BUILDER} [data-role=problems] li"
AUDIENCE = "#id_audience_builder"
AUDIENCE_ROWS = f"{AUDIENCE} [data-role=row]"


@pytest.fixture(scope="module")
def platform(django_db_setup, tmp_path_factory) -> Iterator[str]:
    """One run of the platform for the module's tests (each test's data is its own: the database is emptied after
    each); the console reads the database per request."""
    with platform_running(tmp_path_factory.mktemp("platform")) as (port, _):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def shop(django_user_model) -> None:
    """Six items: stationery (two, one out of stock), mugs (three, one of Acme), a bag; a merchandiser."""
    acme = EntityFactory(kind="brand", external_id="Acme")
    ItemFactory(external_id="pen", category="stationery", price="2.50", attributes={"colour": "red"})
    ItemFactory(external_id="pad", category="stationery", price="6.00", in_stock=False, attributes={"colour": "blue"})
    ItemEntityFactory(item=ItemFactory(external_id="mug", category="mugs", price="8.00"), entity=acme)
    ItemFactory(external_id="cup", category="mugs", price="3.00", attributes={"age_restricted": True})
    ItemFactory(external_id="jar", category="mugs", price="4.00", attributes={"age_restricted": False})
    ItemFactory(external_id="bag", category="bags", price="20.00")
    Placement.objects.get_or_create(name="home")  # the run command installs it on a first start
    user = console_user(django_user_model, "merch", MERCHANDISER)
    user.set_password(BROWSER_TEST_PASSWORD)
    user.save()


def read(query: Any) -> Any:
    """A database read on another thread (Playwright's sync API runs an event loop on this one, where Django refuses
    database calls)."""

    def run() -> Any:
        try:
            return query()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def row(page: Any, index: int) -> Any:
    return page.locator(ROWS).nth(index)


def test_a_condition_is_built_from_rows_with_the_catalogs_values_and_saved_as_json(platform, shop):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        csp_violations = csp_violations_watch(page)
        admin_log_in(page, platform, "merch", RULE_ADD)
        box = page.locator("#id_condition")

        # Rows, not the box; no condition yet: every item.
        expect(page.locator(f"{BUILDER} [data-role=add]")).to_be_visible()
        expect(box).to_be_hidden()
        expect(page.locator(COUNT)).to_have_text("Matches 6 of 6 items.")

        # A category typed in part is completed from the catalog's categories.
        page.click(f"{BUILDER} [data-role=add]")
        first = row(page, 0)
        first.locator("[data-role=value]").fill("sta")
        expect(first.locator("datalist option")).to_have_attribute("value", "stationery")
        first.locator("[data-role=value]").fill("stationery")
        expect(page.locator(COUNT)).to_have_text("Matches 2 of 6 items.")

        # A second row: the price, under a price picked from the catalog's spread.
        page.click(f"{BUILDER} [data-role=add]")
        second = row(page, 1)
        second.locator("[data-role=field]").select_option("price")
        second.locator("[data-role=op]").select_option("lt")
        second.locator("[data-role=value]").focus()
        expect(second.locator("datalist option[label='median price']")).to_have_attribute("value", "4")
        second.locator("[data-role=value]").fill("5")
        expect(page.locator(COUNT)).to_have_text("Matches 1 of 6 items.")
        expect(box).to_have_value(
            '[{"field":"category","op":"eq","value":"stationery"},{"field":"price","op":"lt","value":5}]'
        )

        # The catalog says "stationery": "Stationery" matches nothing, and the warning names the spelling.
        first.locator("[data-role=value]").fill("Stationery")
        expect(page.locator(COUNT)).to_have_text("Matches 0 of 6 items: the rule does nothing as it stands.")
        expect(page.locator(PROBLEMS)).to_have_text(
            "No item in the catalog has the category 'Stationery': did you mean 'stationery'? Use 'stationery'"
        )
        page.locator(PROBLEMS).get_by_role("button", name="Use 'stationery'").click()
        expect(first.locator("[data-role=value]")).to_have_value("stationery")
        expect(page.locator(COUNT)).to_have_text("Matches 1 of 6 items.")
        expect(page.locator(PROBLEMS)).to_have_count(0)

        # Edit as JSON: the box shows what the rows wrote; an edit there comes back as rows.
        page.locator(BUILDER).get_by_role("button", name="Edit as JSON").click()
        expect(box).to_be_visible()
        expect(page.locator(ROWS).first).to_be_hidden()
        box.fill(
            '[{"field": "category", "op": "eq", "value": "stationery"}, {"field": "price", "op": "gte", "value": 5},'
            ' {"field": "in_stock", "op": "eq", "value": false}]'
        )
        expect(page.locator(COUNT)).to_have_text("Matches 1 of 6 items.")  # the box is counted as it is typed
        page.locator(BUILDER).get_by_role("button", name="Edit as rows").click()
        expect(page.locator(ROWS)).to_have_count(3)
        expect(row(page, 1).locator("[data-role=op]")).to_have_value("gte")
        expect(row(page, 2).locator("[data-role=field]")).to_have_value("in_stock")
        expect(row(page, 2).locator("[data-role=choice]")).to_have_value("false")
        expect(box).to_be_hidden()

        # JSON the rows cannot show stays JSON, saying why.
        page.locator(BUILDER).get_by_role("button", name="Edit as JSON").click()
        box.fill('{"field": "category", "op": "gt", "value": "m"}')
        page.locator(BUILDER).get_by_role("button", name="Edit as rows").click()
        expect(page.locator(f"{BUILDER} [data-role=note]")).to_contain_text(
            '"gt" on category is not an operator the rows offer'
        )
        expect(box).to_be_visible()
        box.fill(
            '[{"field": "category", "op": "eq", "value": "stationery"}, {"field": "price", "op": "gte", "value": 5}]'
        )
        page.locator(BUILDER).get_by_role("button", name="Edit as rows").click()
        expect(page.locator(ROWS)).to_have_count(2)

        # Removing a row, then saving: the rule stores the JSON the rows wrote.
        row(page, 1).get_by_role("button", name="Remove this condition").click()
        expect(page.locator(COUNT)).to_have_text("Matches 2 of 6 items.")
        page.fill("#id_name", "No stationery")
        page.select_option("#id_kind", "filter")
        page.click("input[name=_continue]")
        expect(page.locator(".messagelist .success")).to_be_visible()
        # The saved rule opens as rows again.
        expect(page.locator(ROWS)).to_have_count(1)
        expect(row(page, 0).locator("[data-role=value]")).to_have_value("stationery")
        browser.close()

    stored = read(lambda: BusinessRule.objects.values_list("name", "kind", "condition").get())
    assert stored == ("No stationery", "filter", {"field": "category", "op": "eq", "value": "stationery"})
    assert csp_violations == []


def test_no_alcohol_for_minors_is_built_from_rows_for_its_items_and_its_audience(shop, tmp_path):
    """The condition: an attribute the catalog holds as true / false; the audience: a trait suggested from users'
    traits, of the kind their values are, with a sentence saying who in place of a count. Saved as the JSON one
    would write by hand.

    A run of the platform of its own: the module's run caches the content types' ids (the admin's log of a save
    names them), which the database's emptying after a test renumbers; one admin save per run is safe."""
    from playwright.sync_api import expect, sync_playwright

    ShopperFactory(traits={"age": 41, "plan": "gold"})
    with platform_running(tmp_path) as (port, _), sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        csp_violations = csp_violations_watch(page)
        admin_log_in(page, f"http://127.0.0.1:{port}", "merch", RULE_ADD)
        page.fill("#id_name", "No alcohol for minors")
        page.select_option("#id_kind", "filter")

        # Items: the attribute's kind comes from the catalog, so its value is picked from true / false.
        expect(page.locator("#id_condition_attribute_names option[value=age_restricted]")).to_have_count(1)
        page.click(f"{BUILDER} [data-role=add]")
        item_row = row(page, 0)
        item_row.locator("[data-role=field]").select_option("attribute")
        item_row.locator("[data-role=attribute]").fill("age_restricted")
        expect(item_row.locator("[data-role=choice]")).to_have_value("true")
        expect(page.locator(COUNT)).to_have_text("Matches 1 of 6 items.")

        # Users: rows too, with no count; empty is everyone.
        audience_box = page.locator("#id_audience")
        sentence = page.locator(f"{AUDIENCE} [data-role=count]")
        expect(audience_box).to_be_hidden()
        expect(sentence).to_have_text("The rule applies to every user.")
        expect(page.locator("#id_audience_attribute_names option[value=age]")).to_have_attribute("label", "number")
        page.click(f"{AUDIENCE} [data-role=add]")
        user_row = page.locator(AUDIENCE_ROWS).first
        user_row.get_by_label("Trait name").fill("age")
        expect(user_row.get_by_label("Kind of value")).to_have_value("number")  # as the users' ages are
        user_row.get_by_label("Operator").select_option(label="is under")
        user_row.locator("[data-role=value]").fill("18")
        expect(sentence).to_have_text("The rule applies to users whose age is under 18.")
        expect(audience_box).to_have_value('{"field":"traits.age","op":"lt","value":18}')

        # A trait no user has yet: its kind is chosen in the row. Every row must hold; removed, the sentence follows.
        page.click(f"{AUDIENCE} [data-role=add]")
        other = page.locator(AUDIENCE_ROWS).nth(1)
        other.get_by_label("Trait name").fill("member")
        other.get_by_label("Kind of value").select_option(label="true / false")
        other.get_by_label("Operator").select_option(label="is not")
        expect(sentence).to_have_text(
            "The rule applies to users whose age is under 18 and whose member is not true (or who have no member)."
        )
        other.get_by_role("button", name="Remove this condition").click()
        expect(sentence).to_have_text("The rule applies to users whose age is under 18.")

        # Edit as JSON shows the audience's box; back to rows, the row is as it was.
        page.locator(AUDIENCE).get_by_role("button", name="Edit as JSON").click()
        expect(audience_box).to_be_visible()
        page.locator(AUDIENCE).get_by_role("button", name="Edit as rows").click()
        expect(audience_box).to_be_hidden()
        expect(user_row.locator("[data-role=value]")).to_have_value("18")

        page.click("input[name=_continue]")
        expect(page.locator(".messagelist .success")).to_be_visible()
        # The saved rule opens as rows again, both fields.
        expect(page.locator(ROWS)).to_have_count(1)
        expect(page.locator(AUDIENCE_ROWS).get_by_label("Trait name")).to_have_value("age")
        expect(page.locator(f"{AUDIENCE} [data-role=count]")).to_have_text(
            "The rule applies to users whose age is under 18."
        )
        browser.close()

    stored = read(lambda: BusinessRule.objects.values_list("name", "kind", "condition", "audience").get())
    assert stored == (
        "No alcohol for minors",
        "filter",
        {"field": "attributes.age_restricted", "op": "eq", "value": True},
        {"field": "traits.age", "op": "lt", "value": 18},
    )
    assert csp_violations == []


def test_a_category_is_blocked_in_one_step_from_the_builder(platform, shop):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        csp_violations = csp_violations_watch(page)
        admin_log_in(page, platform, "merch", RULE_ADD)

        page.click(f"{BUILDER} [data-role=add]")
        row(page, 0).locator("[data-role=value]").fill("mugs")
        block_link = row(page, 0).get_by_role("link", name="Block this category in one step")
        expect(block_link).to_be_visible()
        page.goto(f"{platform}{block_link.get_attribute('href')}")

        mugs = page.locator("#block-values tr.block-value[data-value='mugs']")
        expect(mugs.locator("td").nth(1)).to_have_text("3")  # its items
        mugs.get_by_label("Where to block mugs").select_option(label="home")
        mugs.get_by_role("button", name="Block").click()
        expect(page.locator(".messagelist .success")).to_contain_text(
            "Blocked with the filter rule Block category mugs (home). Serving applies it within seconds."
        )
        expect(mugs.locator("td").nth(2)).to_have_text("home")
        browser.close()

    stored = read(lambda: list(BusinessRule.objects.values_list("kind", "placement__name", "condition")))
    assert stored == [("filter", "home", {"field": "category", "op": "eq", "value": "mugs"})]
    assert csp_violations == []


# The rules the documentation and the benchmarks write (the demo loads no rule of its own), and the rows each opens as.
DOCUMENTED_RULES = [
    ({"field": "attributes.age_restricted", "op": "eq", "value": True}, [("attribute", "eq", "true")]),
    ({"field": "category", "op": "in", "value": ["mugs", "stationery"]}, [("category", "in", "mugs, stationery")]),
    ({"field": "brand", "op": "eq", "value": "Acme"}, [("brand", "eq", "Acme")]),
    ({"field": "price", "op": "gte", "value": 0}, [("price", "gte", "0")]),
    ({"field": "title", "op": "contains", "value": "mug"}, [("title", "contains", "mug")]),
    ({"field": "attributes.colour", "op": "eq", "value": "red"}, [("attribute", "eq", "red")]),
    (
        [{"field": "category", "op": "eq", "value": "mugs"}, {"field": "in_stock", "op": "eq", "value": True},
         {"field": "price", "op": "lt", "value": 5}],
        [("category", "eq", "mugs"), ("in_stock", "eq", "true"), ("price", "lt", "5")],
    ),
]  # fmt: skip


def test_every_documented_rule_opens_as_rows(platform, shop):
    from playwright.sync_api import expect, sync_playwright

    rule_ids = [
        configuration.rule_save(
            rule=BusinessRule(name=f"Rule {index}", kind="boost", factor=2.0, condition=condition)
        ).pk
        for index, (condition, _) in enumerate(DOCUMENTED_RULES)
    ]
    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        page = browser.new_page()
        admin_log_in(page, platform, "merch", "/admin/")
        shown = []
        for rule_id, (condition, _) in zip(rule_ids, DOCUMENTED_RULES, strict=True):
            page.goto(f"{platform}/admin/surface_app/businessrule/{rule_id}/change/")
            expect(page.locator(COUNT)).to_contain_text("Matches")
            expect(page.locator("#id_condition")).to_be_hidden()  # rows, not JSON
            shown.append(
                page.locator(ROWS).evaluate_all(
                    """rows => rows.map(r => [
                        r.querySelector("[data-role=field]").value,
                        r.querySelector("[data-role=op]").value,
                        r.dataset.kind === "boolean" ? r.querySelector("[data-role=choice]").value
                            : r.querySelector("[data-role=value]").value])"""
                )
            )
            # Untouched rows leave the stored JSON as it was.
            assert json.loads(page.locator("#id_condition").input_value()) == condition
        browser.close()

    assert [[tuple(entry) for entry in rows] for rows in shown] == [rows for _, rows in DOCUMENTED_RULES]
