"""Optional review per placement: rule changes there are drafts that do not serve until another user with the
publish permission approves them; elsewhere rules publish at once."""

from __future__ import annotations

import pytest
from django.urls import reverse

from surface_app import configuration
from surface_app.models import BusinessRule, Placement
from surface_app.rules_compile import rules_snapshot_build
from surface_app.serving.slates import CONFIG_VERSION_KEY
from tests.rules_admin.console_users import rule_form

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/surface_app/businessrule/"


def serving_rule_names() -> list[str]:
    return [rule.name for rule in rules_snapshot_build().rules]


@pytest.fixture
def reviewed():
    return Placement.objects.create(name="home", size=10, requires_review=True)


def test_a_merchandisers_rule_on_a_reviewed_placement_is_a_draft_that_does_not_serve(
    merchandiser_client, merchandiser, reviewed
):
    response = merchandiser_client.post(
        reverse("admin:surface_app_businessrule_add"), rule_form(name="Mugs up", placement=reviewed.pk), follow=True
    )

    rule = BusinessRule.objects.get()
    assert (rule.status, rule.drafted_by, rule.published_by) == ("draft", merchandiser, None)
    assert "'Mugs up' is a draft: it serves once another user approves it." in [
        str(m) for m in response.context["messages"]
    ]
    assert serving_rule_names() == []


def test_another_user_with_the_publish_permission_approves_and_then_it_serves(
    merchandiser_client, administrator_client, administrator, reviewed, clean_redis, django_capture_on_commit_callbacks
):
    merchandiser_client.post(
        reverse("admin:surface_app_businessrule_add"), rule_form(name="Mugs up", placement=reviewed.pk)
    )
    rule = BusinessRule.objects.get()
    approve = {"action": "approve_and_publish", "_selected_action": [rule.pk]}

    refused = merchandiser_client.post(CHANGELIST, approve)  # no publish permission: the action is not offered
    rule.refresh_from_db()
    status_after_merchandiser = rule.status
    before = int(clean_redis.get(CONFIG_VERSION_KEY) or 0)
    with django_capture_on_commit_callbacks(execute=True):
        administrator_client.post(CHANGELIST, approve)

    rule.refresh_from_db()
    assert refused.status_code in (200, 302) and status_after_merchandiser == "draft"
    assert (rule.status, rule.published_by) == ("published", administrator)
    assert serving_rule_names() == ["Mugs up"]
    assert int(clean_redis.get(CONFIG_VERSION_KEY)) == before + 1
    assert rule.history.latest("history_date").history_change_reason == "Approved and published"


def test_the_author_of_a_draft_cannot_approve_it_even_with_the_permission(
    administrator_client, administrator, reviewed
):
    administrator_client.post(
        reverse("admin:surface_app_businessrule_add"), rule_form(name="Own", placement=reviewed.pk)
    )
    rule = BusinessRule.objects.get()

    response = administrator_client.post(
        CHANGELIST, {"action": "approve_and_publish", "_selected_action": [rule.pk]}, follow=True
    )

    rule.refresh_from_db()
    assert rule.status == "draft"
    assert "'Own': another user must approve the change you drafted." in [str(m) for m in response.context["messages"]]


def test_editing_a_published_rule_of_a_reviewed_placement_makes_it_a_draft_again(merchandiser, administrator, reviewed):
    rule = configuration.rule_save(rule=BusinessRule(name="r", kind="boost", placement=reviewed), user=merchandiser)
    configuration.rule_publish(rule=rule, user=administrator)
    assert serving_rule_names() == ["r"]

    rule.factor = 4.0
    configuration.rule_save(rule=rule, user=merchandiser)

    assert rule.status == "draft" and serving_rule_names() == []


def test_rules_elsewhere_publish_at_once(merchandiser):
    other = Placement.objects.create(name="cart", size=6)

    rule = configuration.rule_save(rule=BusinessRule(name="r", kind="boost", placement=other), user=merchandiser)
    everywhere = configuration.rule_save(rule=BusinessRule(name="all", kind="boost"), user=merchandiser)

    assert (rule.status, everywhere.status) == ("published", "published")
    assert sorted(serving_rule_names()) == ["all", "r"]


def test_a_csv_import_of_a_reviewed_placements_rules_makes_drafts(merchandiser_client, reviewed):
    from rules_admin.csv_io import BusinessRuleResource

    dataset = BusinessRuleResource().export()
    dataset.append(["", "Imported", "boost", "home", 0, True, "", "", "", "", 2.0, "", "", ""])

    result = BusinessRuleResource().import_data(dataset, dry_run=False, user=None)

    assert result.totals["new"] == 1
    assert BusinessRule.objects.get().status == "draft" and serving_rule_names() == []
