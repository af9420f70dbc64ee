"""The console's preview and explain page: the slate as served now and with an unsaved rule edit, side by side."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from graph_app.online import catalog_online_rebuild
from personalization import redis_keys
from personalization.candidates import Candidate
from rules_admin.preview_display import preview_columns
from surface_app.models import BusinessRule, Placement
from surface_app.preview import PreviewResult
from tests.factories import ItemFactory, unit

pytestmark = pytest.mark.django_db

URL = "/admin/console/preview/"
SAVE_URL = "/admin/console/preview/save/"


@pytest.fixture
def shop(clean_redis):
    """Mugs near the anchor, in decreasing similarity; a bottle of wine; the user u1 viewed the anchor."""
    ItemFactory(external_id="anchor", title="Anchor mug", category="mugs", embedding=unit(1, 0))
    for index in range(1, 7):
        ItemFactory(external_id=f"mug-{index}", title=f"Mug {index}", category="mugs", embedding=unit(1, index * 0.1))
    ItemFactory(
        external_id="wine", title="Red wine", category="drinks", embedding=unit(1, 0.05),
        attributes={"age_restricted": True},
    )  # fmt: skip
    ItemFactory(external_id="tea", title="Green tea", category="drinks", embedding=unit(1, 0.75))
    catalog_online_rebuild()
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")
    return Placement.objects.create(name="home", size=3)


def staff_client(client, django_user_model, *codenames: str):
    user = django_user_model.objects.create_user("merchandiser", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="surface_app", codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client, django_user_model):
    return staff_client(client, django_user_model, "view_businessrule")


@pytest.fixture
def editor(client, django_user_model):
    return staff_client(client, django_user_model, "view_businessrule", "add_businessrule", "change_businessrule")


def rule_fields(**fields: object) -> dict[str, object]:
    """The rule editor's fields as the browser posts them (an empty kind: no edit)."""
    defaults = {
        "name": "", "kind": "", "placement": "", "priority": "0", "enabled": "on", "valid_from": "",
        "valid_until": "", "condition": "", "audience": "", "factor": "2.0", "item_ids": "", "slot": "", "campaign": "",
    }  # fmt: skip
    return {f"rule-{name}": value for name, value in {**defaults, **fields}.items()}


TEA_PIN = rule_fields(name="Tea promo", kind="pin", item_ids="tea", slot="1", campaign="Tea time")


def column_ids(response, key: str) -> list[str]:
    column = next(column for column in response.context["columns"] if column.key == key)
    return [row.item.item_id for row in column.rows]


def test_the_empty_page_offers_the_placements(viewer, shop):
    response = viewer.get(URL)

    assert response.status_code == 200
    assert response.context["columns"] is None
    assert '<option value="home">home</option>' in response.content.decode()
    assert "admin/css/base.css" in response.content.decode()  # the admin's look


def test_the_rule_editor_builds_the_condition_and_audience_as_rows_over_their_json_boxes(viewer, shop):
    page = viewer.get(URL).content.decode()

    assert 'data-condition-builder="id_rule-condition"' in page and '<textarea name="rule-condition"' in page
    assert 'data-condition-builder="id_rule-audience"' in page and 'data-mode="audience"' in page
    assert 'src="/static/rules_admin/condition_builder.js"' in page


def test_the_preview_of_a_user_shows_their_slate_with_titles_and_sources(viewer, shop):
    response = viewer.post(URL, {"placement": "home", "user_id": "u1", **rule_fields()})

    assert response.status_code == 200
    assert column_ids(response, "served") == column_ids(response, "edited") == ["wine", "mug-1", "mug-2"]
    served = response.context["columns"][0]
    assert [(row.title, row.change) for row in served.rows] == [("Red wine", ""), ("Mug 1", ""), ("Mug 2", "")]
    assert served.rows[0].item.sources and served.result.path == "fallback"  # no model trained here
    html = response.content.decode()
    assert 'id="column-served"' in html and 'data-item-id="wine" data-slot="1"' in html
    assert "Red wine" in html and "No rule edit" in html


def test_the_preview_of_a_made_up_minor_shows_what_the_compliance_filter_removed(viewer, shop):
    BusinessRule.objects.create(
        name="No alcohol for minors", kind="filter",
        condition={"field": "attributes.age_restricted", "op": "eq", "value": True},
        audience={"field": "traits.age", "op": "lt", "value": 18},
    )  # fmt: skip

    response = viewer.post(URL, {"placement": "home", "traits": '{"age": 15}', "recent_items": "anchor, mug-6"})

    assert response.status_code == 200
    assert "wine" not in column_ids(response, "served")
    served = response.context["columns"][0]
    assert [(row.item_id, row.title, row.reason) for row in served.removed] == [
        ("wine", "Red wine", "filter:No alcohol for minors")
    ]
    assert "filter:No alcohol for minors" in response.content.decode()


def test_an_unsaved_pin_shows_in_the_edited_column_only_and_nothing_is_saved(viewer, shop, clean_redis):
    response = viewer.post(URL, {"placement": "home", "user_id": "u1", **TEA_PIN})

    assert response.status_code == 200
    assert column_ids(response, "served") == ["wine", "mug-1", "mug-2"]
    assert column_ids(response, "edited") == ["tea", "wine", "mug-1"]
    served, edited = response.context["columns"]
    assert [(row.change, row.note) for row in edited.rows] == [
        ("new", "new in this slate"), ("down", "slot 1 → 2"), ("down", "slot 2 → 3")
    ]  # fmt: skip
    assert edited.rows[0].item.rules == ("pin:Tea promo",)
    assert [row.item.item_id for row in edited.missing] == ["mug-2"]
    assert [row.change for row in served.rows] == ["", "", "gone"]
    assert not BusinessRule.objects.exists()
    assert clean_redis.get(redis_keys.user_last_slate("u1", "home")) is None  # a preview records nothing


def test_a_bad_condition_shows_its_error_next_to_the_field(viewer, shop):
    bad = rule_fields(
        name="Red things", kind="boost", factor="3", condition='{"field": "colour", "op": "eq", "value": 1}'
    )

    response = viewer.post(URL, {"placement": "home", "user_id": "u1", **bad})

    assert response.status_code == 200
    errors = response.context["rule_form"].errors
    assert list(errors) == ["condition"]
    assert "Unknown item field 'colour'" in errors["condition"][0]
    html = response.content.decode()
    row = html[html.index('id="row-rule-condition"') - 60 : html.index('id="row-rule-factor"')]
    assert "errors" in row and "Unknown item field &#x27;colour&#x27;" in row
    assert column_ids(response, "edited") == column_ids(response, "served")  # no edit until it is fixed
    assert not BusinessRule.objects.exists()


def test_a_pin_of_an_item_the_catalog_does_not_have_is_refused(viewer, shop):
    response = viewer.post(URL, {"placement": "home", "user_id": "u1", **TEA_PIN, "rule-item_ids": "teapot"})

    assert response.context["rule_form"].errors == {"item_ids": ["Not in the catalog: teapot."]}


def test_a_pin_beyond_the_placements_slots_is_refused_in_words(viewer, shop):
    beyond = {**TEA_PIN, "rule-placement": str(shop.pk), "rule-slot": "9"}

    response = viewer.post(URL, {"placement": "home", "user_id": "u1", **beyond})

    errors = response.context["rule_form"].errors
    assert list(errors) == ["slot"] and errors["slot"][0].startswith("Slot 9 is beyond the placement")


def test_a_saved_rule_loads_into_the_editor_and_its_edit_replaces_it_in_the_preview(viewer, shop):
    rule = BusinessRule.objects.create(name="Tea promo", kind="pin", item_ids=["tea"], slot=1)

    loaded = viewer.get(URL, {"placement": "home", "user_id": "u1", "rule": rule.pk})
    moved = viewer.post(URL, {"placement": "home", "user_id": "u1", "rule": rule.pk, **TEA_PIN, "rule-slot": "3"})
    renamed = viewer.post(URL, {"placement": "home", "user_id": "u1", "rule": rule.pk, **TEA_PIN})  # its own slot

    assert loaded.context["rule_form"]["item_ids"].value() == "tea"
    assert loaded.context["rule_form"]["slot"].value() == 1
    assert column_ids(loaded, "served") == ["tea", "wine", "mug-1"]
    assert column_ids(moved, "served") == ["tea", "wine", "mug-1"]
    assert column_ids(moved, "edited") == ["wine", "mug-1", "tea"]
    assert renamed.context["rule_form"].errors == {}
    assert column_ids(renamed, "edited")[0] == "tea"
    assert renamed.context["columns"][1].rows[0].item.explanation == "Pinned by campaign Tea time"
    assert BusinessRule.objects.get().slot == 1


def test_disabling_a_saved_rule_previews_the_slate_without_it(viewer, shop):
    rule = BusinessRule.objects.create(name="Tea promo", kind="pin", item_ids=["tea"], slot=1)
    disabled = {**TEA_PIN}
    del disabled["rule-enabled"]  # an unticked checkbox is not posted

    response = viewer.post(URL, {"placement": "home", "user_id": "u1", "rule": rule.pk, **disabled})

    assert column_ids(response, "edited") == ["wine", "mug-1", "mug-2"]
    assert BusinessRule.objects.get().enabled


def test_save_this_rule_saves_it_and_the_preview_then_serves_it(editor, shop, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = editor.post(SAVE_URL, {"placement": "home", "user_id": "u1", **TEA_PIN})

    rule = BusinessRule.objects.get()
    assert (rule.name, rule.kind, rule.item_ids, rule.slot, rule.campaign) == (
        "Tea promo",
        "pin",
        ["tea"],
        1,
        "Tea time",
    )
    assert response.status_code == 302
    assert response["Location"] == f"{URL}?placement=home&user_id=u1&rule={rule.pk}"
    after = editor.get(response["Location"])
    assert column_ids(after, "served") == ["tea", "wine", "mug-1"]
    assert "Saved" in after.content.decode()


def test_save_refuses_a_bad_rule_and_saves_nothing(editor, shop):
    bad = rule_fields(
        name="Red things", kind="boost", factor="3", condition='{"field": "colour", "op": "eq", "value": 1}'
    )

    response = editor.post(SAVE_URL, {"placement": "home", "user_id": "u1", **bad})

    assert response.status_code == 200
    assert "condition" in response.context["rule_form"].errors
    assert not BusinessRule.objects.exists()


def test_saving_needs_the_permission_to_add_rules(viewer, shop):
    response = viewer.post(SAVE_URL, {"placement": "home", "user_id": "u1", **TEA_PIN})

    assert response.status_code == 403
    assert not BusinessRule.objects.exists()


def test_staff_without_the_rule_permission_get_403_and_others_the_login(client, django_user_model, shop):
    shopper = django_user_model.objects.create_user("shopper", password="pw", is_staff=False)
    staff_client(client, django_user_model)  # staff, no permission

    assert client.get(URL).status_code == 403
    assert client.post(URL, {"placement": "home", "user_id": "u1"}).status_code == 403
    client.logout()
    assert client.get(URL)["Location"].startswith("/admin/login/")
    client.force_login(shopper)
    assert client.get(URL)["Location"].startswith("/admin/login/")


def test_ranked_items_show_their_score_propensity_and_top_contributions(viewer, shop, monkeypatch):
    item = Candidate(
        slot=1, item_id="mug-1", score=0.8123, source="similar", sources=("similar", "popular"),
        explanation="Similar to what you viewed", propensity=0.25, rules=("boost:Mugs",),
        contributions=[("user_item_similarity", 0.4213), ("item_popularity_1d", -0.1)],
    )  # fmt: skip
    ranked = PreviewResult("home", "ranker", "ranker-7", 0.9, ["graph:deadline"], [item], {})
    monkeypatch.setattr("rules_admin.preview_views.preview_explain", lambda **_: (ranked, ranked))

    html = viewer.post(URL, {"placement": "home", "user_id": "u1"}).content.decode()

    shown = (
        "Ranker score", "0.8123", "0.250", "user_item_similarity</code> +0.4213", "item_popularity_1d</code> -0.1000",
        "boost:Mugs", "ranker-7", "0.90", "graph:deadline", "Mug 1", "Similar to what you viewed",
    )  # fmt: skip
    for text in shown:
        assert text in html, text


def test_item_titles_take_one_query(shop, django_assert_num_queries):
    items = [Candidate(f"mug-{slot}", 1.0, "similar", "", ("similar",), None, slot=slot) for slot in (1, 2)]
    result = PreviewResult("home", "fallback", None, 0.0, [], items, {"wine": "block:No wine"})

    with django_assert_num_queries(1):
        columns = preview_columns(served=result, edited=result, has_edit=False)

    assert [row.title for row in columns[0].rows] == ["Mug 1", "Mug 2"]
    assert columns[0].removed[0].title == "Red wine"


def test_a_validity_window_is_read_from_the_browsers_date_fields(viewer, shop):
    backwards = {**TEA_PIN, "rule-valid_from": "2027-03-01T09:00", "rule-valid_until": "2027-02-01T09:00"}
    expired = {**TEA_PIN, "rule-valid_from": "2020-03-01T09:00", "rule-valid_until": "2020-04-01T09:00"}

    refused = viewer.post(URL, {"placement": "home", "user_id": "u1", **backwards})
    past = viewer.post(URL, {"placement": "home", "user_id": "u1", **expired})

    assert list(refused.context["rule_form"].errors) == ["valid_until"]
    assert column_ids(past, "edited") == ["wine", "mug-1", "mug-2"]  # a pin that has ended does not serve


def test_a_merchandiser_can_preview_and_save(client, django_user_model, shop):
    from rules_admin.roles import MERCHANDISER
    from tests.rules_admin.console_users import console_user

    client.force_login(console_user(django_user_model, "merch", MERCHANDISER))

    assert client.post(URL, {"placement": "home", "user_id": "u1", **TEA_PIN}).status_code == 200
    assert client.post(SAVE_URL, {"placement": "home", "user_id": "u1", **TEA_PIN}).status_code == 302
    assert BusinessRule.objects.get().name == "Tea promo"
