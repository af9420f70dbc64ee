"""Every change to placements, rules and caps is recorded (who, when, before / after) and a recorded version is
restored in one click, through the configuration services (serving's version is bumped), itself recorded."""

from __future__ import annotations

import pytest

from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.serving.slates import CONFIG_VERSION_KEY
from tests.rules_admin.console_users import rule_form

pytestmark = pytest.mark.django_db


def config_version(redis) -> int:
    return int(redis.get(CONFIG_VERSION_KEY) or 0)


@pytest.fixture
def boost(django_capture_on_commit_callbacks):
    home = Placement.objects.create(name="home", size=10)
    with django_capture_on_commit_callbacks(execute=True):
        return configuration.rule_save(rule=BusinessRule(name="Mugs up", kind="boost", placement=home, factor=2.0))


def test_an_admin_edit_records_who_when_and_before_after(merchandiser_client, merchandiser, boost, clean_redis,
                                                        django_capture_on_commit_callbacks):  # fmt: skip
    before = config_version(clean_redis)
    with django_capture_on_commit_callbacks(execute=True):
        response = merchandiser_client.post(
            f"/admin/surface_app/businessrule/{boost.pk}/change/",
            rule_form(name="Mugs up", placement=boost.placement_id, factor="3.5", priority="2"),
        )

    assert response.status_code == 302
    created, changed = boost.history.order_by("history_date")
    assert (created.history_type, created.history_user) == ("+", None)
    assert (changed.history_type, changed.history_user) == ("~", merchandiser)
    assert changed.history_date >= created.history_date
    delta = changed.diff_against(created)
    assert sorted((c.field, c.old, c.new) for c in delta.changes) == [("factor", 2.0, 3.5), ("priority", 0, 2)]
    assert config_version(clean_redis) == before + 1


def test_history_page_lists_versions_with_a_revert_button_on_earlier_ones(merchandiser_client, boost):
    configuration.rule_save(rule=_with(boost, factor=4.0))

    page = merchandiser_client.get(f"/admin/surface_app/businessrule/{boost.pk}/history/")

    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("Revert to this version") == 1  # the current version has none
    assert "4.0" in html and "2.0" in html


def _with(obj, **fields):
    for name, value in fields.items():
        setattr(obj, name, value)
    return obj


def test_revert_restores_the_previous_values_bumps_the_version_and_is_recorded(
    merchandiser_client, merchandiser, boost, clean_redis, django_capture_on_commit_callbacks
):
    merchandiser_client.post(
        f"/admin/surface_app/businessrule/{boost.pk}/change/",
        rule_form(name="Mugs way up", placement=boost.placement_id, factor="6"),
    )
    first = boost.history.earliest("history_date")
    before = config_version(clean_redis)

    with django_capture_on_commit_callbacks(execute=True):
        response = merchandiser_client.post(
            f"/admin/surface_app/businessrule/{boost.pk}/history/{first.history_id}/revert/"
        )

    assert response.status_code == 302
    boost.refresh_from_db()
    assert (boost.name, boost.factor) == ("Mugs up", 2.0)
    assert config_version(clean_redis) == before + 1
    latest = boost.history.latest("history_date")
    assert (latest.history_type, latest.history_user, latest.factor) == ("~", merchandiser, 2.0)
    assert latest.history_change_reason.startswith("Reverted to the version of ")
    assert boost.history.count() == 3


def test_a_revert_that_no_longer_validates_is_refused_with_the_reason(merchandiser_client, boost):
    home = boost.placement
    pinned = configuration.rule_save(
        rule=BusinessRule(name="pin", kind="pin", placement=home, item_ids=["a"], slot=8, campaign="c")
    )
    first = pinned.history.earliest("history_date")
    configuration.placement_save(placement=_with(home, size=6))
    configuration.rule_save(rule=_with(pinned, slot=2))

    response = merchandiser_client.post(
        f"/admin/surface_app/businessrule/{pinned.pk}/history/{first.history_id}/revert/", follow=True
    )

    pinned.refresh_from_db()
    assert pinned.slot == 2
    assert [str(m) for m in response.context["messages"]] == [
        "Could not revert: Slot 8 is beyond the placement 'home', which has 6 slots."
    ]


def test_placements_and_caps_are_recorded_and_reverted_too(merchandiser_client, clean_redis,
                                                          django_capture_on_commit_callbacks):  # fmt: skip
    home = configuration.placement_save(placement=Placement(name="home", size=10, default_items=[]))
    cap = configuration.cap_save(cap=FrequencyCap(name="thrice", scope="item", max_impressions=3))
    configuration.placement_save(placement=_with(home, size=4, fallbacks=["popular"]))
    configuration.cap_save(cap=_with(cap, max_impressions=9))
    before = config_version(clean_redis)

    with django_capture_on_commit_callbacks(execute=True):
        placement_reverted = merchandiser_client.post(
            f"/admin/surface_app/placement/{home.pk}/history/{home.history.earliest('history_date').history_id}/revert/"
        )
        cap_reverted = merchandiser_client.post(
            f"/admin/surface_app/frequencycap/{cap.pk}/history/{cap.history.earliest('history_date').history_id}/revert/"
        )

    assert (placement_reverted.status_code, cap_reverted.status_code) == (302, 302)
    home.refresh_from_db()
    cap.refresh_from_db()
    assert (home.size, home.fallbacks, cap.max_impressions) == (
        10,
        ["popular", "session", "last_slate", "default_list"],
        3,
    )
    assert config_version(clean_redis) == before + 2


def test_a_deleted_rule_can_be_brought_back_from_its_history(merchandiser_client, boost):
    pk = boost.pk
    merchandiser_client.post(f"/admin/surface_app/businessrule/{pk}/delete/", {"post": "yes"})
    assert not BusinessRule.objects.filter(pk=pk).exists()
    created = BusinessRule.history.filter(id=pk).earliest("history_date")

    response = merchandiser_client.post(f"/admin/surface_app/businessrule/{pk}/history/{created.history_id}/revert/")

    assert response.status_code == 302
    assert BusinessRule.objects.get(pk=pk).name == "Mugs up"
    assert list(BusinessRule.history.filter(id=pk).order_by("history_date").values_list("history_type", flat=True)) == [
        "+", "-", "+",
    ]  # fmt: skip


def test_a_viewer_without_change_permission_cannot_revert(client, django_user_model, boost):
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_businessrule"))
    client.force_login(viewer)
    first = boost.history.earliest("history_date")

    history = client.get(f"/admin/surface_app/businessrule/{boost.pk}/history/")
    revert = client.post(f"/admin/surface_app/businessrule/{boost.pk}/history/{first.history_id}/revert/")

    assert history.status_code == 200 and "Revert to this version" not in history.content.decode()
    assert revert.status_code == 403


@pytest.mark.parametrize("model", ["placement", "businessrule", "pinrule", "frequencycap", "fallbacklist"])
def test_every_console_section_shows_its_history(merchandiser_client, model):
    home = configuration.placement_save(placement=Placement(name="home", size=10))
    pinned = configuration.rule_save(
        rule=BusinessRule(name="pin", kind="pin", placement=home, item_ids=["a"], slot=1, campaign="c")
    )
    cap = configuration.cap_save(cap=FrequencyCap(name="cap", scope="item"))
    configuration.placement_save(placement=_with(home, size=8))
    configuration.rule_save(rule=_with(pinned, slot=2))
    configuration.cap_save(cap=_with(cap, max_impressions=5))
    pk = {"placement": home.pk, "fallbacklist": home.pk, "frequencycap": cap.pk}.get(model, pinned.pk)

    page = merchandiser_client.get(f"/admin/surface_app/{model}/{pk}/history/")

    assert page.status_code == 200
    assert page.content.decode().count("Revert to this version") == 1
