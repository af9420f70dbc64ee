"""The console's experiments: the list, the create form (with the holdout preset, per-field errors from the
services), each experiment's page with its verdict and warnings, and the start and stop buttons; merchandisers
may do all of it, a staff user without the permissions nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from graph_app.state.models import Impression
from surface_app.experiments.models import Experiment
from surface_app.experiments.services import experiment_create
from surface_app.models import Placement
from tests.factories import EventFactory
from tests.rules_admin.console_users import console_user

pytestmark = pytest.mark.django_db

LIST_URL = "/admin/console/experiments/"
NEW_URL = "/admin/console/experiments/new/"


@pytest.fixture(autouse=True)
def home() -> Placement:
    return Placement.objects.create(name="home", size=3)


def _form(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "holdout", "placement": "home", "primary_metric": "rpm", "guardrail_p99_ms": "",
        "guardrail_degraded_rate": "", "action": "start",
        "v0-name": "personalized", "v0-weight": "90", "v0-kind": "current",
        "v1-name": "holdout", "v1-weight": "10", "v1-kind": "popularity",
    }  # fmt: skip
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def _experiment(**fields: Any) -> Experiment:
    defaults: dict[str, Any] = {
        "name": "holdout",
        "placement": "home",
        "primary_metric": "ctr",
        "variants": [
            {"name": "control", "weight": 1, "treatment": {"kind": "current"}},
            {"name": "popular", "weight": 1, "treatment": {"kind": "popularity"}},
        ],
    }
    return experiment_create(**{**defaults, **fields})


def test_the_index_links_the_experiments(merchandiser_client):
    response = merchandiser_client.get("/admin/")

    assert LIST_URL in response.content.decode()


def test_the_list_shows_each_experiment(merchandiser_client):
    running = _experiment()
    draft = _experiment(name="draft test", start=False)

    response = merchandiser_client.get(LIST_URL)

    page = response.content.decode()
    assert response.status_code == 200
    assert f'data-experiment="{running.pk}" data-status="running"' in page
    assert f'data-experiment="{draft.pk}" data-status="draft"' in page
    assert "control (1), popular (1)" in page and 'id="holdout-link"' in page


def test_the_holdout_preset_fills_the_form(merchandiser_client):
    response = merchandiser_client.get(NEW_URL, {"preset": "holdout"})

    form, variants = response.context["form"], response.context["variants"]
    assert form.initial["primary_metric"] == "rpm"
    assert [(row.initial.get("name"), row.initial.get("weight"), row.initial.get("kind")) for row in variants[:3]] == [
        ("personalized", 90, "current"), ("holdout", 10, "popularity"), (None, None, None),
    ]  # fmt: skip


def test_creating_starts_the_experiment_and_shows_it(merchandiser_client, home):
    response = merchandiser_client.post(NEW_URL, _form(guardrail_p99_ms="80"))

    experiment = Experiment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{LIST_URL}{experiment.pk}/"
    assert (experiment.status, experiment.placement_id, experiment.primary_metric) == ("running", home.pk, "rpm")
    assert experiment.variants == [
        {"name": "personalized", "weight": 90, "treatment": {"kind": "current"}},
        {"name": "holdout", "weight": 10, "treatment": {"kind": "popularity"}},
    ]
    assert (experiment.guardrail_p99_ms, experiment.guardrail_degraded_rate) == (80.0, None)


def test_saving_as_a_draft(merchandiser_client):
    merchandiser_client.post(NEW_URL, _form(action="draft"))

    assert Experiment.objects.get().status == "draft"


def test_treatment_fields_reach_the_service(merchandiser_client):
    merchandiser_client.post(NEW_URL, _form(**{
        "v2-name": "fresh", "v2-weight": "5", "v2-kind": "sources", "v2-sources": ["popular", "fresh"],
        "v3-name": "fallback", "v3-weight": "5", "v3-kind": "rules", "v3-fallback": "popular", "v3-version": "x",
    }))  # fmt: skip

    assert [variant["treatment"] for variant in Experiment.objects.get().variants[2:]] == [
        {"kind": "sources", "sources": ["popular", "fresh"]},
        {"kind": "rules", "fallback": "popular"},
    ]


@pytest.mark.parametrize(
    ("fields", "row", "field"),
    [
        ({"v1-kind": "model"}, 1, "version"),
        ({"v1-kind": "model", "v1-version": "nope"}, 1, "version"),
        ({"v1-kind": "sources"}, 1, "sources"),
        ({"v1-kind": "rules"}, 1, "rule_set"),
        ({"v1-kind": ""}, 1, "kind"),
        ({"v1-name": ""}, 1, "name"),
        # A row left empty is left out: the service's index counts the rows sent, the error lands on the form's.
        ({"v1-name": "", "v1-weight": "", "v1-kind": "", "v2-name": "b", "v2-kind": "current"}, 2, "weight"),
    ],
)
def test_a_refused_variant_field_is_shown_on_its_row(merchandiser_client, fields, row, field):
    response = merchandiser_client.post(NEW_URL, _form(**fields))

    assert response.status_code == 200
    variants = response.context["variants"]
    assert list(variants[row].errors) == [field]
    assert not Experiment.objects.exists()


def test_form_and_service_errors_land_on_their_fields(merchandiser_client):
    one_variant = merchandiser_client.post(NEW_URL, _form(**{"v1-name": "", "v1-weight": "", "v1-kind": ""}))
    bad_limit = merchandiser_client.post(NEW_URL, _form(guardrail_degraded_rate="2"))
    no_name = merchandiser_client.post(NEW_URL, _form(name=""))

    assert "From 2 to 5 variants" in " ".join(one_variant.context["general_errors"])
    assert list(bad_limit.context["form"].errors) == ["guardrail_degraded_rate"]
    assert list(no_name.context["form"].errors) == ["name"]
    assert not Experiment.objects.exists()


def test_a_second_running_experiment_is_refused_on_the_placement_field(merchandiser_client):
    _experiment()

    response = merchandiser_client.post(NEW_URL, _form(name="second"))

    assert list(response.context["form"].errors) == ["placement"]
    assert Experiment.objects.count() == 1


def _served(experiment: Experiment, counts: dict[str, int]) -> None:
    now = timezone.now()
    Impression.objects.bulk_create(
        Impression(request_id=f"r-{variant}-{index}", user_key=f"{variant}-{index}", placement="home",
                   item_id="sku-0", slot=0, served_at=now, experiment_id=experiment.pk,
                   experiment_variant=variant, serving_ms=5.0 + index)
        for variant, count in counts.items() for index in range(count)
    )  # fmt: skip


def test_the_experiment_page_shows_variants_lifts_chart_and_verdict(merchandiser_client):
    experiment = _experiment(guardrails={"serving_p99_ms": 20})
    _served(experiment, {"control": 20, "popular": 20})
    EventFactory(type="click", user_id="control-0", item_id="sku-0", request_id="r-control-0", attributed_slot=0)

    response = merchandiser_client.get(f"{LIST_URL}{experiment.pk}/")

    page = response.content.decode()
    assert response.status_code == 200
    rows = response.context["variant_rows"]
    assert [(row["name"], row["shoppers"], row["impressions"], row["ctr"]) for row in rows] == [
        ("control", "20", "20", "5.00%"), ("popular", "20", "20", "0.00%"),
    ]  # fmt: skip
    assert 'data-verdict="guardrail breached: ' in page and "guardrail-warning" in page
    assert 'data-variant="popular"' in page and 'class="number sequential"' in page
    assert 'data-chart="ctr"' in page and 'data-chart="impressions"' in page
    assert 'id="stop"' in page and 'id="start"' not in page


def test_the_page_warns_of_a_sample_ratio_mismatch(merchandiser_client):
    experiment = _experiment()
    _served(experiment, {"control": 100, "popular": 40})

    page = merchandiser_client.get(f"{LIST_URL}{experiment.pk}/").content.decode()

    assert 'id="srm-warning"' in page and 'data-verdict="stop: SRM"' in page


def test_a_draft_starts_and_stops_from_its_page(merchandiser_client):
    draft = _experiment(start=False)

    started = merchandiser_client.post(f"{LIST_URL}{draft.pk}/start/")
    status_after_start = Experiment.objects.get().status
    stopped = merchandiser_client.post(f"{LIST_URL}{draft.pk}/stop/")

    assert (started.status_code, started["Location"]) == (302, f"{LIST_URL}{draft.pk}/")
    assert (status_after_start, stopped.status_code, Experiment.objects.get().status) == ("running", 302, "stopped")


def test_starting_beside_a_running_experiment_says_why(merchandiser_client):
    _experiment()
    draft = _experiment(name="draft", start=False)

    response = merchandiser_client.post(f"{LIST_URL}{draft.pk}/start/", follow=True)

    assert "already running on placement" in response.content.decode()
    assert Experiment.objects.get(pk=draft.pk).status == "draft"


def test_start_and_stop_take_only_post(merchandiser_client):
    experiment = _experiment()

    assert merchandiser_client.get(f"{LIST_URL}{experiment.pk}/stop/").status_code == 405
    assert Experiment.objects.get().status == "running"


def test_an_unknown_experiment_is_404(merchandiser_client):
    assert merchandiser_client.get(f"{LIST_URL}999/").status_code == 404
    assert merchandiser_client.post(f"{LIST_URL}999/stop/").status_code == 404


def test_staff_without_the_permissions_may_do_nothing(django_user_model):
    experiment = _experiment()
    client = Client()
    client.force_login(console_user(django_user_model, "nobody", None))

    responses = [
        client.get(LIST_URL), client.get(NEW_URL), client.post(NEW_URL, _form(name="x")),
        client.get(f"{LIST_URL}{experiment.pk}/"), client.post(f"{LIST_URL}{experiment.pk}/stop/"),
    ]  # fmt: skip

    assert [response.status_code for response in responses] == [403] * 5
    assert list(Experiment.objects.values_list("name", "status")) == [("holdout", "running")]


def test_anonymous_visitors_are_sent_to_the_login(client):
    response = client.get(LIST_URL)

    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_start_and_stop_need_the_csrf_token(merchandiser):
    experiment = _experiment()
    client = Client(enforce_csrf_checks=True)
    client.force_login(merchandiser)

    response = client.post(f"{LIST_URL}{experiment.pk}/stop/")

    assert response.status_code == 403
    assert Experiment.objects.get().status == "running"
