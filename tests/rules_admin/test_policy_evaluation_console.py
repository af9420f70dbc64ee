"""The console's off-policy evaluation page: who may open it, the form, and a run on logged slates."""

from __future__ import annotations

import pytest
from django.test import Client

from surface_app.models import Placement
from tests.rules_admin.console_users import console_user
from tests.scoring_app.test_policy_evaluation import SLATES, logged_shop  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

URL = "/admin/console/evaluation/"


def test_the_page_needs_the_model_registry_s_view_permission(django_user_model, merchandiser_client):
    nobody = Client()
    nobody.force_login(console_user(django_user_model, "no-group", None))

    assert nobody.get(URL).status_code == 403
    page = merchandiser_client.get(URL)
    assert page.status_code == 200
    assert page.context["report"] is None
    assert [value for value, _ in page.context["form"].fields["candidate"].choices] == ["popularity"]


def test_the_page_runs_an_evaluation_and_shows_estimates_intervals_and_the_warning(
    logged_shop,  # noqa: F811
    merchandiser_client,
):
    serving, clicks = logged_shop
    Placement.objects.create(name="home", size=5)

    page = merchandiser_client.get(URL, {"placement": "home", "candidate": serving, "days": 14, "reward": "click"})

    assert page.status_code == 200
    report = page.context["report"]
    assert report.estimate.slates == SLATES
    assert report.estimate.ips.value == pytest.approx(clicks / SLATES, abs=1e-6)
    text = page.content.decode()
    for shown in ("Self-normalized IPS", "Doubly robust", "Effective sample size", "Small effective sample size"):
        assert shown in text
    assert f"{report.estimate.dr.low:.4f} to {report.estimate.dr.high:.4f}" in text


def test_a_placement_without_logged_slates_and_an_unknown_candidate_are_form_errors(merchandiser_client):
    Placement.objects.create(name="search", size=5)

    empty = merchandiser_client.get(URL, {"placement": "search", "candidate": "popularity", "days": 14})
    unknown = merchandiser_client.get(URL, {"placement": "search", "candidate": "ranker-nope", "days": 14})

    assert empty.context["report"] is None
    assert empty.context["form"].errors == {"placement": ["no logged ranker slates for placement 'search' in the "
                                                          "last 14 days"]}  # fmt: skip
    assert list(unknown.context["form"].errors) == ["candidate"]
