"""Roles: merchandisers edit rules, caps, fallbacks and campaigns; administrators also manage API keys, models,
schedules, event types and dead letters; every admin view checks; repeated failed logins are locked out."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from graph_app.model_registry.models import ModelVersion
from rules_admin.roles import ADMINISTRATOR, MERCHANDISER, roles_sync
from surface_app.models import BusinessRule
from tests.rules_admin.console_users import console_user, rule_form

pytestmark = pytest.mark.django_db

ADMINISTRATOR_ONLY = [
    "admin:personalization_apikey_changelist",
    "admin:personalization_apikey_add",
    "admin:django_celery_beat_periodictask_changelist",
    "admin:django_celery_beat_crontabschedule_changelist",
    "admin:signals_app_deadletter_changelist",
    "admin:graph_app_customeventtype_add",
]
EVERY_CONSOLE_USER = [
    "admin:surface_app_placement_changelist",
    "admin:surface_app_businessrule_changelist",
    "admin:surface_app_businessrule_add",
    "admin:surface_app_pinrule_changelist",
    "admin:surface_app_frequencycap_add",
    "admin:surface_app_fallbacklist_changelist",
    "admin:graph_app_modelversion_changelist",
    "admin:graph_app_item_changelist",
]


def permissions(name: str) -> set[str]:
    group = Group.objects.get(name=name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def test_syncing_the_roles_gives_both_groups_their_permissions_and_again_changes_nothing():
    # The migration runs this sync; run here too, as a transactional test on the same worker may have flushed the
    # migration's rows before this test.
    roles_sync(apps=apps)
    merchandiser, administrator = permissions(MERCHANDISER), permissions(ADMINISTRATOR)

    roles_sync(apps=apps)

    assert (permissions(MERCHANDISER), permissions(ADMINISTRATOR)) == (merchandiser, administrator)
    assert Group.objects.filter(name__in=[MERCHANDISER, ADMINISTRATOR]).count() == 2
    assert {
        "surface_app.change_businessrule",
        "surface_app.add_pinrule",
        "surface_app.change_fallbacklist",
        "surface_app.delete_frequencycap",
        "graph_app.view_item",
        "graph_app.view_modelversion",
    } <= merchandiser
    assert not {p for p in merchandiser if p.startswith(("personalization.", "django_celery_beat."))}
    assert "graph_app.change_modelversion" not in merchandiser
    assert merchandiser < administrator
    assert "surface_app.publish_rule" in administrator and "surface_app.publish_rule" not in merchandiser
    assert {
        "personalization.add_apikey",
        "django_celery_beat.change_periodictask",
        "graph_app.change_modelversion",
        "signals_app.delete_deadletter",
        "graph_app.add_customeventtype",
        "axes.delete_accessattempt",
    } <= administrator


@pytest.mark.parametrize("url", EVERY_CONSOLE_USER + ADMINISTRATOR_ONLY)
def test_a_merchandiser_opens_the_merchandising_pages_and_gets_403_on_the_administrators(merchandiser_client, url):
    expected = 403 if url in ADMINISTRATOR_ONLY else 200
    assert merchandiser_client.get(reverse(url)).status_code == expected


@pytest.mark.parametrize("url", EVERY_CONSOLE_USER + ADMINISTRATOR_ONLY)
def test_an_administrator_opens_every_page(administrator_client, url):
    assert administrator_client.get(reverse(url)).status_code == 200


def test_a_merchandiser_edits_a_rule(merchandiser_client):
    response = merchandiser_client.post(reverse("admin:surface_app_businessrule_add"), rule_form(name="Mugs up"))

    assert response.status_code == 302
    assert BusinessRule.objects.get().name == "Mugs up"


def test_staff_without_a_role_gets_403_on_the_rules(client, django_user_model):
    client.force_login(console_user(django_user_model, "nobody", None))

    assert client.get(reverse("admin:surface_app_businessrule_changelist")).status_code == 403
    assert client.post(reverse("admin:surface_app_businessrule_add"), rule_form()).status_code == 403
    assert not BusinessRule.objects.exists()


def _version(state: str, version: str) -> ModelVersion:
    return ModelVersion.objects.create(kind="ranker", version=version, state=state, artifact=b"")


def test_model_version_actions_need_the_change_permission(merchandiser_client, administrator_client):
    _version("active", "v1")
    candidate = _version("candidate", "v2")
    url = reverse("admin:graph_app_modelversion_changelist")
    promote = {"action": "promote", "_selected_action": [candidate.pk]}

    merchandiser_page = merchandiser_client.get(url)
    merchandiser_client.post(url, promote)
    candidate.refresh_from_db()
    state_after_merchandiser = candidate.state
    administrator_actions = [
        name for name, _ in administrator_client.get(url).context["action_form"].fields["action"].choices
    ]

    assert merchandiser_page.status_code == 200 and merchandiser_page.context["action_form"] is None  # no actions
    assert state_after_merchandiser == "candidate"
    assert {"promote", "canary", "rollback", "retire"} <= set(administrator_actions)


def test_the_index_lists_merchandising_first_then_models_and_schedules(administrator_client):
    apps_listed = administrator_client.get(reverse("admin:index")).context["app_list"]
    labels = [app["app_label"] for app in apps_listed]
    tools = [model["name"] for model in apps_listed[0]["models"]]
    surface = [model["object_name"] for model in apps_listed[1]["models"]]

    # The console's own pages first, then merchandising.
    assert tools == [
        "Block a category or brand", "Dashboard", "Experiments", "Off-policy evaluation", "Preview and explain"
    ]  # fmt: skip
    assert labels[:4] == ["console", "surface_app", "models", "django_celery_beat"]
    assert surface == ["Placement", "BusinessRule", "PinRule", "FrequencyCap", "FallbackList"]


def test_a_merchandisers_index_hides_what_they_cannot_open(merchandiser_client):
    labels = [app["app_label"] for app in merchandiser_client.get(reverse("admin:index")).context["app_list"]]

    assert "personalization" not in labels and "django_celery_beat" not in labels
    assert labels[:2] == ["console", "surface_app"]


def test_repeated_failed_logins_lock_the_account_out_even_with_the_right_password(django_user_model, settings):
    console_user(django_user_model, "merch", MERCHANDISER)
    client = Client()
    login = reverse("admin:login")

    failures = [
        client.post(login, {"username": "merch", "password": "wrong"}).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT)
    ]
    locked = client.post(login, {"username": "merch", "password": "console-test-pw"})

    assert failures[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1)  # the form again, with its error
    assert failures[-1] == 429 and locked.status_code == 429
    assert client.get(reverse("admin:surface_app_businessrule_changelist")).status_code == 302  # still logged out
    # Another user from the same address is not locked out.
    console_user(django_user_model, "other", MERCHANDISER)
    assert client.post(login, {"username": "other", "password": "console-test-pw"}).status_code == 302


def test_a_successful_login_before_the_limit_resets_the_count(django_user_model, settings):
    console_user(django_user_model, "merch", MERCHANDISER)
    client = Client()
    login = reverse("admin:login")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        client.post(login, {"username": "merch", "password": "wrong"})

    assert client.post(login, {"username": "merch", "password": "console-test-pw"}).status_code == 302
    client.logout()
    assert client.post(login, {"username": "merch", "password": "wrong"}).status_code == 200
