"""The experiments' API beyond create/read/stop: the list with its filters, starting a draft, and the results,
all for admin keys only; errors name the field."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from graph_app.state.models import Impression
from personalization.services import api_key_create
from surface_app.experiments.models import Experiment
from surface_app.models import Placement
from tests.factories import EventFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/experiments"


@pytest.fixture(autouse=True)
def placements() -> None:
    Placement.objects.create(name="home", size=3)
    Placement.objects.create(name="cart", size=3)


def _body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "holdout",
        "placement": "home",
        "primary_metric": "ctr",
        "variants": [
            {"name": "control", "weight": 9, "treatment": {"kind": "current"}},
            {"name": "holdout", "weight": 1, "treatment": {"kind": "popularity"}},
        ],
        **fields,
    }


def _create(api_client: APIClient, **fields: Any) -> dict[str, Any]:
    response = api_client.post(URL, _body(**fields), format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_list_filters_by_placement_and_status(api_client):
    home = _create(api_client)
    draft = _create(api_client, name="draft", start=False)
    cart = _create(api_client, name="cart test", placement="cart")

    everything = api_client.get(URL)
    on_home = api_client.get(URL, {"placement": "home"})
    drafts = api_client.get(URL, {"status": "draft"})
    running_on_cart = api_client.get(URL, {"placement": "cart", "status": "running"})

    assert [row["id"] for row in everything.json()] == [cart["id"], draft["id"], home["id"]]
    assert [row["id"] for row in on_home.json()] == [draft["id"], home["id"]]
    assert [row["id"] for row in drafts.json()] == [draft["id"]]
    assert [row["id"] for row in running_on_cart.json()] == [cart["id"]]


def test_list_refuses_an_unknown_status_naming_it(api_client):
    response = api_client.get(URL, {"status": "paused"})

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["status"]


def test_start_runs_a_draft(api_client):
    draft = _create(api_client, start=False)

    response = api_client.post(f"{URL}/{draft['id']}/start")

    assert response.status_code == 200
    assert (response.json()["status"], Experiment.objects.get().status) == ("running", "running")
    assert response.json()["started_at"] is not None


def test_start_is_409_while_another_runs_on_the_placement(api_client):
    _create(api_client)
    draft = _create(api_client, name="draft", start=False)

    response = api_client.post(f"{URL}/{draft['id']}/start")

    assert response.status_code == 409
    assert (response.json()["code"], list(response.json()["errors"])) == ("conflict", ["placement"])
    assert Experiment.objects.get(pk=draft["id"]).status == "draft"


def test_a_stopped_experiment_cannot_start_again(api_client):
    created = _create(api_client)
    api_client.post(f"{URL}/{created['id']}/stop")

    response = api_client.post(f"{URL}/{created['id']}/start")

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["status"]
    assert Experiment.objects.get().status == "stopped"


def test_results_of_a_running_experiment(api_client):
    created = _create(api_client, guardrails={"serving_p99_ms": 50})
    now = timezone.now()
    for variant, user in (("control", "u1"), ("control", "u2"), ("holdout", "u3")):
        Impression.objects.bulk_create(
            Impression(request_id=f"r-{user}", user_key=user, placement="home", item_id=f"sku-{slot}", slot=slot,
                       served_at=now, experiment_id=created["id"], experiment_variant=variant, serving_ms=12.0)
            for slot in range(2)
        )  # fmt: skip
    EventFactory(type="click", user_id="u1", item_id="sku-0", request_id="r-u1", attributed_slot=0,
                 occurred_at=now + timedelta(minutes=1))  # fmt: skip

    response = api_client.get(f"{URL}/{created['id']}/results")

    assert response.status_code == 200, response.json()
    body = response.json()
    control, holdout = body["variants"]
    assert (control["name"], control["shoppers"], control["impressions"], control["clicks"]) == ("control", 2, 4, 1)
    assert control["ctr"]["value"] == 0.25 and control["treatment"] == {"kind": "current"}
    assert (holdout["shoppers"], holdout["impressions"], holdout["clicks"], holdout["ctr"]["value"]) == (1, 2, 0, 0)
    assert holdout["ctr"]["std_error"] is None  # one shopper: no variance, null rather than NaN
    assert (control["slates"], control["p99_serving_ms"], control["degraded_rate"]) == (2, 12.0, 0.0)
    assert [(lift["variant"], lift["metric"]) for lift in body["lifts"]][:2] == [
        ("holdout", "ctr"), ("holdout", "add_to_cart_rate"),
    ]  # fmt: skip
    assert body["sample_ratio"]["observed"] == {"control": 2, "holdout": 1}
    assert body["sample_ratio"]["expected"] == {"control": pytest.approx(2.7), "holdout": pytest.approx(0.3)}
    assert body["guardrail_breaches"] == [] and body["verdict"] == "no difference yet"
    assert body["experiment"]["id"] == created["id"] and body["pre_exposure_days"] == 14
    assert [(point["variant"], point["impressions"], point["clicks"]) for point in body["daily"]] == [
        ("control", 4, 1), ("holdout", 2, 0),
    ]  # fmt: skip


def test_results_of_a_draft_are_empty(api_client):
    draft = _create(api_client, start=False)

    body = api_client.get(f"{URL}/{draft['id']}/results").json()

    assert [variant["shoppers"] for variant in body["variants"]] == [0, 0]
    assert (body["sample_ratio"], body["daily"], body["verdict"]) == (None, [], "no difference yet")


def test_unknown_experiments_are_404(api_client):
    for response in (
        api_client.get(f"{URL}/999/results"),
        api_client.post(f"{URL}/999/start"),
        api_client.get(f"{URL}/nope/results"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(("method", "path"), [("get", ""), ("get", "/1/results"), ("post", "/1/start")])
def test_a_key_is_required(anonymous_client, method, path):
    response = getattr(anonymous_client, method)(f"{URL}{path}")

    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path"), [("get", ""), ("get", "/1/results"), ("post", "/1/start")])
def test_only_an_admin_key_may_call(method, path):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='k', scope='server').raw_key}")

    response = getattr(client, method)(f"{URL}{path}")

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
