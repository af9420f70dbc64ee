"""CSV export and import of rules and fallback lists in the console, validated row by row with a report."""

from __future__ import annotations

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from rules_admin.csv_io import BusinessRuleResource, FallbackListResource
from surface_app import configuration
from surface_app.models import BusinessRule, Placement
from surface_app.serving.slates import CONFIG_VERSION_KEY
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    ItemFactory(external_id="mug-1", attributes={"colour": "red"})
    ItemFactory(external_id="mug-2")
    home = Placement.objects.create(name="home", size=10, default_items=["mug-1"])
    configuration.rule_save(
        rule=BusinessRule(
            name="Red up",
            kind="boost",
            placement=home,
            factor=3.0,
            priority=2,
            condition={"field": "attributes.colour", "op": "eq", "value": "red"},
        )
    )
    configuration.rule_save(
        rule=BusinessRule(name="Spring pin", kind="pin", placement=home, item_ids=["mug-2"], slot=1, campaign="Spring")
    )
    configuration.rule_save(rule=BusinessRule(name="No mug-1", kind="block", item_ids=["mug-1", "mug-2"]))
    return home


def export(client, model: str, resource) -> list[dict[str, str]]:
    prefix = resource.__name__.lower()
    fields = {f"{prefix}_{name}": "on" for name in resource().get_export_order()}
    response = client.post(reverse(f"admin:surface_app_{model}_export"), {"format": "0", "resource": "0", **fields})
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def to_csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def import_csv(client, model: str, content: bytes, *, confirm: bool = True):
    """The admin's two steps: upload (a dry run with the report), then confirm (only offered without errors)."""
    upload = SimpleUploadedFile("rules.csv", content, content_type="text/csv")
    report = client.post(
        reverse(f"admin:surface_app_{model}_import"), {"resource": "0", "format": "0", "import_file": upload}
    )
    assert report.status_code == 200
    result = report.context["result"]
    if not confirm or result.has_errors() or result.has_validation_errors():
        return report, result
    confirm_form = report.context["confirm_form"]
    done = client.post(reverse(f"admin:surface_app_{model}_process_import"), confirm_form.initial, follow=True)
    assert done.status_code == 200
    return done, result


def test_rules_round_trip_through_csv_and_an_edit_is_reported_per_row(merchandiser_client, shop, clean_redis,
                                                                      django_capture_on_commit_callbacks):  # fmt: skip
    rows = export(merchandiser_client, "businessrule", BusinessRuleResource)
    assert [(row["name"], row["kind"], row["placement"], row["item_ids"]) for row in rows] == [
        ("Red up", "boost", "home", ""),  # by priority, then the most recent first
        ("No mug-1", "block", "", "mug-1,mug-2"),
        ("Spring pin", "pin", "home", "mug-2"),
    ]
    before = {rule.pk: (rule.name, rule.condition, rule.item_ids, rule.factor) for rule in BusinessRule.objects.all()}

    _, unchanged = import_csv(merchandiser_client, "businessrule", to_csv(rows))
    assert (unchanged.totals["skip"], unchanged.totals["update"], unchanged.totals["new"]) == (3, 0, 0)
    assert {
        rule.pk: (rule.name, rule.condition, rule.item_ids, rule.factor) for rule in BusinessRule.objects.all()
    } == before

    rows[0]["factor"] = "4.5"
    new = {**rows[2], "id": "", "name": "Also block", "item_ids": "mug-2"}
    version_before = int(clean_redis.get(CONFIG_VERSION_KEY) or 0)
    with django_capture_on_commit_callbacks(execute=True):
        _, result = import_csv(merchandiser_client, "businessrule", to_csv([*rows, new]))

    assert (result.totals["update"], result.totals["new"], result.totals["skip"]) == (1, 1, 2)
    assert BusinessRule.objects.get(name="Red up").factor == 4.5
    assert BusinessRule.objects.get(name="Also block").item_ids == ["mug-2"]
    assert int(clean_redis.get(CONFIG_VERSION_KEY)) == version_before + 1  # once for the whole import
    assert BusinessRule.objects.get(name="Red up").history.latest("history_date").history_user.username == "merch"


def test_a_bad_row_is_refused_with_its_column_and_nothing_is_written(merchandiser_client, shop):
    rows = export(merchandiser_client, "businessrule", BusinessRuleResource)
    rows[0]["condition"] = '{"field": "attributes.colur", "op": "eq", "value": "red"}'
    rows[2]["slot"] = "11"
    rows[1]["name"] = "Renamed, fine on its own"

    report, result = import_csv(merchandiser_client, "businessrule", to_csv(rows))

    assert [(row.number, row.field_specific_errors) for row in result.invalid_rows] == [
        (1, {"condition": ["No item in the catalog has the attribute 'colur': check the spelling of "
                           "attributes.<name> (a rule on an unknown attribute matches nothing)."]}),
        (3, {"slot": ["Slot 11 is beyond the placement 'home', which has 10 slots."]}),
    ]  # fmt: skip
    html = report.content.decode()
    assert "confirm_form" not in report.context or report.context.get("confirm_form") is None
    assert "Slot 11 is beyond the placement" in html and "colur" in html
    assert not BusinessRule.objects.filter(name__startswith="Renamed").exists()


def test_fallback_lists_round_trip_and_unknown_placements_or_items_are_reported(merchandiser_client, shop):
    rows = export(merchandiser_client, "fallbacklist", FallbackListResource)
    assert rows == [{"name": "home", "fallbacks": "popular,session,last_slate,default_list", "default_items": "mug-1"}]

    rows[0].update(fallbacks="last_slate,popular", default_items="mug-2,mug-1")
    _, result = import_csv(merchandiser_client, "fallbacklist", to_csv(rows))
    shop.refresh_from_db()
    assert result.totals["update"] == 1
    assert (shop.fallbacks, shop.default_items) == (["last_slate", "popular"], ["mug-2", "mug-1"])

    bad = [{"name": "homepage", "fallbacks": "popular", "default_items": ""},
           {"name": "home", "fallbacks": "popular,psychic", "default_items": "mug-404"}]  # fmt: skip
    _, refused = import_csv(merchandiser_client, "fallbacklist", to_csv(bad))
    assert [(row.number, row.field_specific_errors) for row in refused.invalid_rows] == [
        (1, {"name": ["No placement named 'homepage': create it under Placements first."]}),
        (2, {"fallbacks": ["Unknown fallbacks: psychic."]}),
    ]


def test_the_resource_alone_validates_like_the_form():
    Placement.objects.create(name="cart", size=6)
    dataset = BusinessRuleResource().export()
    dataset.append(["", "Too far", "pin", "cart", 0, True, "", "", "", "", 2.0, "mug-1", 7, "C"])

    result = BusinessRuleResource().import_data(dataset, dry_run=True)

    assert [row.field_specific_errors for row in result.invalid_rows] == [
        {"slot": ["Slot 7 is beyond the placement 'cart', which has 6 slots."]}
    ]
