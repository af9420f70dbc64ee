"""The experiments' API (`surface_app.experiments`): create running or draft, read, stop; every refusal names its
field; one running experiment a placement, in the service and in the database; admin keys only."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from graph_app.interface import model_version_create
from personalization.services import api_key_create
from surface_app.experiments.models import Experiment
from surface_app.models import Placement

pytestmark = pytest.mark.django_db

URL = "/api/v1/experiments"


@pytest.fixture
def home() -> Placement:
    return Placement.objects.create(name="home", size=3)


def _body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "ranker vs popularity",
        "placement": "home",
        "primary_metric": "ctr",
        "variants": [
            {"name": "control", "weight": 1, "treatment": {"kind": "current"}},
            {"name": "popular", "weight": 1, "treatment": {"kind": "popularity"}},
        ],
        "guardrails": {"serving_p99_ms": 80, "degraded_rate": 0.05},
        **fields,
    }


def _variants(*treatments: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"v{index}", "weight": 1, "treatment": treatment} for index, treatment in enumerate(treatments)]


def test_create_starts_the_experiment_and_stores_it(api_client, home):
    response = api_client.post(URL, _body(), format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    stored = Experiment.objects.get(pk=body["id"])
    assert (body["status"], body["placement"], body["primary_metric"]) == ("running", "home", "ctr")
    assert body["guardrails"] == {"serving_p99_ms": 80.0, "degraded_rate": 0.05}
    assert body["variants"] == _body()["variants"] and body["started_at"] and body["stopped_at"] is None
    assert (stored.status, stored.placement_id, stored.variants) == ("running", home.pk, _body()["variants"])
    assert (stored.guardrail_p99_ms, stored.guardrail_degraded_rate) == (80.0, 0.05)
    assert len(stored.salt) == 16 and stored.started_at is not None and "salt" not in body


def test_create_with_start_false_is_a_draft(api_client, home):
    response = api_client.post(URL, _body(start=False, guardrails={}), format="json")

    assert response.status_code == 201
    stored = Experiment.objects.get(pk=response.json()["id"])
    assert (response.json()["status"], response.json()["started_at"]) == ("draft", None)
    assert (stored.status, stored.started_at, stored.guardrail_p99_ms) == ("draft", None, None)


def test_every_treatment_kind_is_stored_with_its_fields(api_client, home):
    version = model_version_create(kind="ranker", artifact=b"model", metrics={}).version
    Placement.objects.create(name="summer", enabled=False)  # the rule set: a placement that is not served
    variants = _variants(
        {"kind": "model", "version": version},
        {"kind": "sources", "sources": ["popular", "fresh"]},
        {"kind": "rules", "fallback": "popular", "version": "ignored"},
        {"kind": "rules", "rule_set": "summer"},
        {"kind": "current"},
    )

    response = api_client.post(URL, _body(variants=variants), format="json")

    assert response.status_code == 201, response.json()
    assert [variant["treatment"] for variant in Experiment.objects.get().variants] == [
        {"kind": "model", "version": version},
        {"kind": "sources", "sources": ["popular", "fresh"]},
        {"kind": "rules", "fallback": "popular"},
        {"kind": "rules", "rule_set": "summer"},
        {"kind": "current"},
    ]


def test_get_reads_the_experiment(api_client, home):
    created = api_client.post(URL, _body(), format="json").json()

    response = api_client.get(f"{URL}/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_stop_stops_once_and_again_changes_nothing(api_client, home):
    created = api_client.post(URL, _body(), format="json").json()

    first = api_client.post(f"{URL}/{created['id']}/stop")
    stopped_at = Experiment.objects.get().stopped_at
    second = api_client.post(f"{URL}/{created['id']}/stop")

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["status"] == second.json()["status"] == "stopped"
    assert first.json()["stopped_at"] == second.json()["stopped_at"]
    assert Experiment.objects.get().status == "stopped" and stopped_at is not None
    assert Experiment.objects.get().stopped_at == stopped_at


def test_a_stopped_experiment_frees_its_placement(api_client, home):
    created = api_client.post(URL, _body(), format="json").json()
    api_client.post(f"{URL}/{created['id']}/stop")

    response = api_client.post(URL, _body(name="second"), format="json")

    assert response.status_code == 201
    assert sorted(Experiment.objects.values_list("status", flat=True)) == ["running", "stopped"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"placement": "nowhere"}, "placement"),
        ({"variants": _variants({"kind": "current"})}, "variants"),
        ({"variants": _variants(*[{"kind": "current"}] * 6)}, "variants"),
        (
            {"variants": [{"name": "same", "weight": 1, "treatment": {"kind": "current"}}] * 2},
            "variants",
        ),
        ({"variants": [{**_variants({"kind": "current"})[0], "weight": 0}, _variants({"kind": "current"})[0]]},
         "variants.0.weight"),
        ({"variants": _variants({"kind": "current"}, {"kind": "magic"})}, "variants.1.treatment.kind"),
        ({"variants": _variants({"kind": "current"}, {"kind": "model"})}, "variants.1.treatment.version"),
        ({"variants": _variants({"kind": "current"}, {"kind": "model", "version": "nope"})},
         "variants.1.treatment.version"),
        ({"variants": _variants({"kind": "current"}, {"kind": "sources"})}, "variants.1.treatment.sources"),
        ({"variants": _variants({"kind": "current"}, {"kind": "sources", "sources": []})},
         "variants.1.treatment.sources"),
        ({"variants": _variants({"kind": "current"}, {"kind": "rules"})}, "variants.1.treatment.rule_set"),
        ({"primary_metric": "happiness"}, "primary_metric"),
        ({"guardrails": {"degraded_rate": 2}}, "guardrails.degraded_rate"),
        ({"guardrails": {"serving_p99_ms": 0}}, "guardrails.serving_p99_ms"),
        ({"name": ""}, "name"),
    ],
)  # fmt: skip
def test_bad_input_is_400_naming_the_field_and_stores_nothing(api_client, home, fields, field):
    response = api_client.post(URL, _body(**fields), format="json")

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], list(body["errors"])) == ("invalid", [field])
    assert not Experiment.objects.exists()


def test_an_unknown_experiment_is_404(api_client):
    for response in (
        api_client.get(f"{URL}/999"),
        api_client.post(f"{URL}/999/stop"),
        api_client.get(f"{URL}/not-a-number"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


def test_a_second_running_experiment_on_a_placement_is_409(api_client, home):
    first = api_client.post(URL, _body(), format="json")

    second = api_client.post(URL, _body(name="second"), format="json")
    draft = api_client.post(URL, _body(name="draft", start=False), format="json")

    assert (first.status_code, second.status_code, draft.status_code) == (201, 409, 201)
    assert (second.json()["code"], list(second.json()["errors"])) == ("conflict", ["placement"])
    assert sorted(Experiment.objects.values_list("name", "status")) == [
        ("draft", "draft"), ("ranker vs popularity", "running"),
    ]  # fmt: skip


def test_a_draft_cannot_start_beside_a_running_experiment(api_client, home):
    from personalization.errors import ApplicationError
    from surface_app.experiments.services import experiment_start

    api_client.post(URL, _body(), format="json")
    draft = api_client.post(URL, _body(name="draft", start=False), format="json").json()

    with pytest.raises(ApplicationError) as refused:
        experiment_start(experiment_id=draft["id"])

    assert (refused.value.status_code, refused.value.code) == (409, "conflict")
    assert Experiment.objects.get(pk=draft["id"]).status == "draft"


def test_a_draft_starts(api_client, home):
    from surface_app.experiments.services import experiment_start

    draft = api_client.post(URL, _body(start=False), format="json").json()

    started = experiment_start(experiment_id=draft["id"])

    assert (started.status, Experiment.objects.get().status) == ("running", "running")
    assert started.started_at is not None


def test_the_database_refuses_two_running_experiments_on_a_placement(home):
    fields = {"placement": home, "primary_metric": "ctr", "variants": [], "salt": "s", "status": "running"}
    Experiment.objects.create(name="first", **fields)

    with pytest.raises(IntegrityError, match="experiment_one_running_per_placement"), transaction.atomic():
        Experiment.objects.create(name="second", **fields)

    Experiment.objects.create(name="stopped", **{**fields, "status": "stopped"})
    assert Experiment.objects.count() == 2


def test_a_key_is_required(anonymous_client, home):
    response = anonymous_client.post(URL, _body(), format="json")

    assert response.status_code == 401
    assert not Experiment.objects.exists()


@pytest.mark.parametrize("scope", ["public", "server"])
def test_only_an_admin_key_may_call(home, scope):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='k', scope=scope).raw_key}")

    response = client.post(URL, _body(), format="json")

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert not Experiment.objects.exists()
