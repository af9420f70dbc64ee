"""The issue's story end to end against the live servers: a holdout started through the API, shelves served through
the REST API with their variant, clicks sent back as a storefront sends them, the consumer storing both, and the
results counting exactly what happened per variant."""

from __future__ import annotations

import pytest

from signals_app.consumer import events_drain_all
from tests.surface_app.experiments.test_serving import recommend, shop  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/experiments"
HOLDOUT = {
    "name": "Does personalization pay?", "placement": "home", "primary_metric": "ctr",
    "variants": [{"name": "current", "weight": 1, "treatment": {"kind": "current"}},
                 {"name": "holdout", "weight": 1, "treatment": {"kind": "popularity"}}],
}  # fmt: skip


def test_a_holdout_counts_per_variant_what_its_shoppers_were_shown_and_clicked(api_client, shop):  # noqa: F811
    created = api_client.post(URL, HOLDOUT, format="json")
    assert created.status_code == 201 and created.json()["status"] == "running"
    experiment_id = created.json()["id"]

    shown: dict[str, dict[str, int]] = {"current": {}, "holdout": {}}
    clicks = {"current": 0, "holdout": 0}
    for n in range(24):
        user = f"shopper-{n}"
        slate = recommend(api_client, user_id=user)
        variant = slate["experiment"]["variant"]
        assert slate["experiment"]["id"] == experiment_id
        assert (slate["path"] == "popularity") == (variant == "holdout")
        shown[variant][user] = len(slate["items"])
        if n % 3 == 0:  # every third shopper clicks the first item of their shelf
            click = {"event_id": f"click-{n}", "type": "click", "user_id": user,
                     "item_id": slate["items"][0]["item_id"], "request_id": slate["request_id"],
                     "placement": "home"}  # fmt: skip
            assert api_client.post("/api/v1/events", click, format="json").status_code == 202
            clicks[variant] += 1
    while events_drain_all().read:
        pass

    response = api_client.get(f"{URL}/{experiment_id}/results")

    assert response.status_code == 200
    variants = {row["name"]: row for row in response.json()["variants"]}
    for name in ("current", "holdout"):
        assert variants[name]["shoppers"] == len(shown[name]) > 0
        assert variants[name]["impressions"] == sum(shown[name].values())
        assert variants[name]["clicks"] == clicks[name]
    assert response.json()["verdict"] in ("no difference yet", "winner: current", "winner: holdout", "stop: SRM")
