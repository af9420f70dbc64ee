"""Pins and frequency caps: a pin shows at every visit unless it opts in to the caps, whose counts it still feeds."""

from __future__ import annotations

import pytest

from graph_app.online import catalog_online_rebuild
from personalization import redis_keys
from personalization.process_caches import process_caches_reset
from personalization.redis_client import get_redis
from surface_app import configuration
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.preview import preview_explain
from surface_app.serving.caps import (
    CapItem,
    CapSpec,
    cap_block_reason,
    caps_decode,
    caps_enforce_and_record,
    caps_queue,
)
from tests.factories import ItemFactory, unit

pytestmark = pytest.mark.django_db

DAY = 86400
NOW = 1_700_000_000.0


@pytest.fixture
def shop(clean_redis):
    """Mugs near the anchor the user viewed, in decreasing similarity, then tea (the campaign's item)."""
    ItemFactory(external_id="anchor", category="mugs", embedding=unit(1, 0))
    for index in range(1, 7):
        ItemFactory(external_id=f"mug-{index}", category="mugs", embedding=unit(1, index * 0.1))
    ItemFactory(external_id="tea", category="drinks", embedding=unit(1, 0.75))
    catalog_online_rebuild()
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")


def shelf(api_client, placement: str = "home") -> list[str]:
    process_caches_reset(["surface.rules_snapshot"])  # rules written in this test's transaction: compile them inline
    response = api_client.get("/api/v1/recommendations", {"user_id": "u1", "placement": placement})
    assert response.status_code == 200
    return [item["item_id"] for item in response.json()["items"]]


def tea_pin(home: Placement, **fields) -> BusinessRule:
    return configuration.rule_save(
        rule=BusinessRule(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=1,
                          campaign="Tea time", **fields)
    )  # fmt: skip


def test_a_pin_outlasts_an_item_cap_after_its_first_impression(api_client, shop):
    home = Placement.objects.create(name="home", size=3)
    Placement.objects.create(name="everything", size=10)
    configuration.cap_save(cap=FrequencyCap(name="Once a day", scope="item", max_impressions=1, window_seconds=DAY))
    tea_pin(home)

    first, second = shelf(api_client), shelf(api_client)

    assert first == ["tea", "mug-1", "mug-2"]
    assert second == ["tea", "mug-3", "mug-4"]  # the cap took the mugs shown once, not the pinned tea
    # Its impressions were counted all the same: where no pin shows it, the cap holds it back.
    assert shelf(api_client, "everything") == ["mug-5", "mug-6"]


def test_a_pin_that_opts_in_to_caps_leaves_after_its_first_impression(api_client, shop):
    home = Placement.objects.create(name="home", size=3)
    configuration.cap_save(cap=FrequencyCap(name="Once a day", scope="item", max_impressions=1, window_seconds=DAY))
    tea_pin(home, caps_apply=True)

    first, second = shelf(api_client), shelf(api_client)

    assert first == ["tea", "mug-1", "mug-2"]
    assert second == ["mug-3", "mug-4", "mug-5"]


def test_a_campaign_cap_still_caps_the_pin(api_client, shop):
    home = Placement.objects.create(name="home", size=3)
    configuration.cap_save(
        cap=FrequencyCap(name="Campaign once", scope="campaign", max_impressions=1, window_seconds=DAY)
    )
    tea_pin(home)

    first, second = shelf(api_client), shelf(api_client)

    assert first == ["tea", "mug-1", "mug-2"]
    assert second == ["mug-1", "mug-2", "mug-3"]


def test_the_enforce_script_counts_an_exempt_pin_without_refusing_it(clean_redis):
    specs = [
        CapSpec("item", max_impressions=1, window_seconds=DAY, name="once"),
        CapSpec("category", max_impressions=1, window_seconds=DAY, name="one-drink"),
    ]
    pinned_tea = CapItem("tea", category="drinks", pin_exempt=True)
    coffee = CapItem("coffee", category="drinks")

    def serve(items: list[CapItem], now: float) -> list[str]:
        return caps_enforce_and_record(
            user_key="u1", placement="home", request_id=f"r{now}", items=items, specs=specs, now=now
        )

    assert serve([pinned_tea, coffee], NOW) == ["coffee"]  # the pin's impression counts for the category
    assert serve([pinned_tea], NOW + 1) == []
    assert serve([CapItem("tea", category="drinks")], NOW + 2) == ["tea"]  # not pinned: capped
    # The read path agrees: the blocks hold for tea, but not where a pin shows it.
    pipeline = get_redis().pipeline(transaction=False)
    caps_queue(pipeline, user_key="u1", now=NOW + 3, horizon_seconds=DAY)
    state = caps_decode(pipeline.execute(), now=NOW + 3)
    assert cap_block_reason(state, specs, pinned_tea, "home") is None
    assert cap_block_reason(state, specs, CapItem("tea", category="drinks"), "home") == "cap:once"
    assert cap_block_reason(state, specs, coffee, "home") == "cap:one-drink"


def test_the_preview_keeps_a_capped_pin_and_shows_an_edit_that_opts_it_in_removing_it(api_client, shop):
    home = Placement.objects.create(name="home", size=3)
    configuration.cap_save(cap=FrequencyCap(name="Once a day", scope="item", max_impressions=1, window_seconds=DAY))
    pin = tea_pin(home)
    shelf(api_client)  # tea's first impression
    edit = BusinessRule.objects.get(pk=pin.pk)
    edit.caps_apply = True

    served, edited = preview_explain(placement="home", user_id="u1", rule_edits=[edit])

    assert [item.item_id for item in served.items] == ["tea", "mug-3", "mug-4"]
    assert [item.item_id for item in edited.items] == ["mug-3", "mug-4", "mug-5"]
    assert edited.removed["tea"] == "cap:Once a day"
