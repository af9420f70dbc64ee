"""The Surface layer through the API: placements, rules after the model, caps, fallbacks, impressions."""

from __future__ import annotations

import json

import pytest
from django.db import DatabaseError

from graph_app.online import catalog_online_rebuild
from graph_app.state.models import Impression
from personalization import redis_keys
from personalization.process_caches import process_caches_reset
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest
from surface_app.models import BusinessRule, FrequencyCap, Placement
from surface_app.serving import slates
from tests.conftest import dead_redis
from tests.factories import ItemFactory, unit

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(clean_redis):
    """Mugs near the anchor, in decreasing similarity; a bottle of wine; the user viewed the anchor."""
    ItemFactory(external_id="anchor", category="mugs", embedding=unit(1, 0))
    for index in range(1, 7):
        ItemFactory(external_id=f"mug-{index}", category="mugs", embedding=unit(1, index * 0.1))
    ItemFactory(external_id="wine", category="drinks", embedding=unit(1, 0.05), attributes={"age_restricted": True})
    ItemFactory(external_id="tea", category="drinks", embedding=unit(1, 0.75))
    # The catalog copy serving reads (published after commit in production).
    catalog_online_rebuild()
    clean_redis.lpush(redis_keys.user_recent_items("u1"), "anchor")


def shelf(api_client, user: str = "u1", placement: str = "home", **params) -> dict:
    process_caches_reset(["surface.rules_snapshot"])  # rules written in this test's transaction: compile them inline
    response = api_client.get("/api/v1/recommendations", {"user_id": user, "placement": placement, **params})
    assert response.status_code == 200
    return response.json()


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_a_placement_sets_the_shelf_size(api_client, shop):
    Placement.objects.create(name="home", size=3)

    assert ids(shelf(api_client)) == ["wine", "mug-1", "mug-2"]


def test_a_compliance_filter_hides_age_restricted_items_from_minors_only(
    api_client, shop, django_capture_on_commit_callbacks
):
    Placement.objects.create(name="home", size=3)
    BusinessRule.objects.create(
        name="No alcohol for minors", kind="filter",
        condition={"field": "attributes.age_restricted", "op": "eq", "value": True},
        audience={"field": "traits.age", "op": "lt", "value": 18},
    )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        assert api_client.put("/api/v1/users/u1", {"traits": {"age": 16}}, format="json").status_code == 201
    clean = shelf(api_client)
    assert "wine" not in ids(clean)

    with django_capture_on_commit_callbacks(execute=True):
        api_client.put("/api/v1/users/u1", {"traits": {"age": 30}}, format="json")
    assert ids(shelf(api_client))[0] == "wine"


def test_pins_boosts_buries_and_blocks_apply_in_their_documented_order(api_client, shop):
    home = Placement.objects.create(name="home", size=4)
    BusinessRule.objects.create(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=1,
                                campaign="Tea time")  # fmt: skip
    BusinessRule.objects.create(name="No wine", kind="block", item_ids=["wine"])
    BusinessRule.objects.create(name="Bury mug-1", kind="bury", factor=10,
                                condition={"field": "price", "op": "gte", "value": 0}, placement=None)  # fmt: skip
    BusinessRule.objects.create(name="Mug 3 week", kind="boost", factor=50,
                                condition={"field": "title", "op": "eq", "value": "nothing"})  # fmt: skip

    body = shelf(api_client)

    assert ids(body)[0] == "tea"
    assert body["items"][0]["explanation"] == "Pinned by campaign Tea time"
    assert body["items"][0]["rules"] == ["bury:Bury mug-1", "pin:Tea promo"]  # tea was a candidate too
    assert "wine" not in ids(body)
    assert ids(body)[1:] == ["mug-1", "mug-2", "mug-3"]  # buried together: their order holds
    assert all(item["rules"] == ["bury:Bury mug-1"] for item in body["items"][1:])


def test_diversity_limits_items_of_one_category(api_client, shop):
    Placement.objects.create(name="home", size=4, max_per_category=2)

    assert ids(shelf(api_client)) == ["wine", "mug-1", "mug-2", "tea"]


def test_an_item_capped_per_day_leaves_the_shelf_after_its_impressions(api_client, shop):
    home = Placement.objects.create(name="home", size=2)
    FrequencyCap.objects.create(name="twice a day", scope="item", placement=home, max_impressions=2,
                                window_seconds=86400)  # fmt: skip

    first, second, third = (ids(shelf(api_client)) for _ in range(3))

    assert first == second == ["wine", "mug-1"]
    assert third == ["mug-2", "mug-3"]


def test_items_a_concurrent_request_capped_are_replaced_and_only_the_slate_served_is_logged(
    api_client, shop, clean_redis, monkeypatch
):
    import numpy as np

    from graph_app.features.online import PLACEMENT_COUNTERS

    home = Placement.objects.create(name="home", size=2)
    FrequencyCap.objects.create(name="once a day", scope="item", placement=home, max_impressions=1,
                                window_seconds=86400)  # fmt: skip
    # The caps read before ranking miss what another request of the user just took: the script decides.
    monkeypatch.setattr(slates.frequency_caps, "caps_block_reasons", lambda *args, **kwargs: {})

    first, second = shelf(api_client), shelf(api_client)

    assert ids(first) == ["wine", "mug-1"]  # nothing refused: the script logged the impressions itself
    assert ids(second) == ["mug-2", "mug-3"]  # both refused, replaced by the spares
    while events_drain_all().read:
        pass
    for body in (first, second):
        logged = Impression.objects.filter(request_id=body["request_id"]).order_by("slot")
        assert [(row.item_id, row.slot) for row in logged] == [(ids(body)[0], 0), (ids(body)[1], 1)]
        kept = json.loads(clean_redis.get(redis_keys.slate(body["request_id"])))
        assert [item["item_id"] for item in kept["items"]] == ids(body)
    assert json.loads(clean_redis.get(redis_keys.user_last_slate("u1", "home"))) == ["mug-2", "mug-3"]
    placement_counters = redis_keys.placement_counters(redis_keys.partition_of("u1"), "home")
    counters = clean_redis.hmget(placement_counters, ["wine", "mug-2"])
    impressions = [float(np.frombuffer(value, dtype=PLACEMENT_COUNTERS)["values"][0][1]) for value in counters]
    assert impressions == pytest.approx([1.0, 1.0], rel=1e-3)  # the refused wine counted once


def test_caps_and_impressions_are_recorded_after_redis_forgot_the_script(api_client, shop, clean_redis):
    home = Placement.objects.create(name="home", size=2)
    FrequencyCap.objects.create(name="five a day", scope="item", placement=home, max_impressions=5,
                                window_seconds=86400)  # fmt: skip
    first = shelf(api_client)
    clean_redis.script_flush()  # a restart or a failover

    second = shelf(api_client)

    assert first["degraded"] == second["degraded"] == ["ranker_unavailable"]  # no model trained here: nothing else
    while events_drain_all().read:
        pass
    assert Impression.objects.filter(request_id__in=[first["request_id"], second["request_id"]]).count() == 4


def test_a_skipped_item_cools_down_and_a_purchased_one_is_left_out(api_client, shop):
    Placement.objects.create(name="home", size=3)
    FrequencyCap.objects.create(name="a day after a skip", scope="cooldown", window_seconds=86400)
    events_ingest(raw_events=[
        {"event_id": "s1", "type": "skip", "user_id": "u1", "item_id": "wine"},
        {"event_id": "p1", "type": "purchase", "user_id": "u1", "item_id": "mug-1"},
    ])  # fmt: skip

    shown = ids(shelf(api_client))

    assert "wine" not in shown and "mug-1" not in shown


def test_a_product_page_shows_items_similar_to_its_item(api_client, shop):
    Placement.objects.create(name="product_page", context="item", size=2)

    body = shelf(api_client, user="someone", placement="product_page", item_id="mug-6")

    assert "mug-6" not in ids(body)
    assert ids(body) == ["mug-5", "tea"]


def test_score_failing_serves_the_placements_popular_fallback(api_client, shop, monkeypatch):
    from tests.signals_app.helpers import ingest_views

    Placement.objects.create(name="home", size=2)
    ingest_views({"tea": 5, "mug-6": 3})

    def broken(**kwargs):
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(slates, "slate_score", broken)

    body = shelf(api_client)

    assert ids(body) == ["tea", "mug-6"]
    assert body["path"] == "fallback"
    assert "score_failed:RuntimeError" in body["degraded"]
    assert "fallback_popular" in body["degraded"]


def test_a_product_page_whose_score_fails_falls_back_to_items_like_its_item_before_popular_ones(
    api_client, shop, monkeypatch
):
    from tests.signals_app.helpers import ingest_views

    Placement.objects.create(name="product_page", context="item", size=2)  # fallbacks: popular first, then session
    ingest_views({"wine": 5, "anchor": 4})

    def broken(**kwargs):
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(slates, "slate_score", broken)

    body = shelf(api_client, user="someone", placement="product_page", item_id="mug-6")

    assert ids(body) == ["mug-5", "tea"]  # the nearest to mug-6, not the popular wine and anchor
    assert "fallback_session" in body["degraded"] and "fallback_popular" not in body["degraded"]


def test_a_product_page_late_for_its_ranker_still_leads_with_its_items_related_items(api_client, shop, monkeypatch):
    from graph_app.similar_lists import similar_lists_refresh
    from tests.signals_app.helpers import ingest_views

    Placement.objects.create(name="product_page", context="item", size=3)
    ingest_views({"wine": 5, "anchor": 4})
    similar_lists_refresh(k=3)
    monkeypatch.setattr(slates, "SURFACE_RESERVE_MS", 10**9)  # whatever retrieval took, Score's time is up

    body = shelf(api_client, user="someone", placement="product_page", item_id="mug-3")

    assert "score_late" in body["degraded"]
    assert body["path"] == "fallback"
    assert {"mug-2", "mug-4"} <= set(ids(body)[:2])  # mug-3's nearest, unranked, before any fallback
    assert all("context" in item["sources"] for item in body["items"][:2])


def test_everything_failing_serves_the_last_slate_then_the_default_list(api_client, shop, monkeypatch):
    Placement.objects.create(name="home", size=2, default_items=["tea", "mug-6"])
    before = ids(shelf(api_client))
    monkeypatch.setattr(slates, "get_redis", dead_redis)
    from scoring_app.engine import retrieval

    monkeypatch.setattr(retrieval, "get_redis", dead_redis)

    def no_database(**kwargs):
        raise DatabaseError("database down")

    monkeypatch.setattr(slates, "popular_fallback", no_database)

    remembered = shelf(api_client)
    stranger = shelf(api_client, user="stranger")

    assert ids(remembered) == before
    assert "fallback_last_slate" in remembered["degraded"]
    assert ids(stranger) == ["tea", "mug-6"]
    assert "fallback_default_list" in stranger["degraded"]


def test_impressions_are_logged_with_rules_path_and_variant(api_client, shop):
    home = Placement.objects.create(name="home", size=2)
    BusinessRule.objects.create(name="Tea promo", kind="pin", placement=home, item_ids=["tea"], slot=2,
                                campaign="Tea time")  # fmt: skip

    body = shelf(api_client)
    while events_drain_all().read:
        pass

    stored = list(Impression.objects.filter(request_id=body["request_id"]).order_by("slot"))
    assert [(row.item_id, row.rules, row.path, row.variant) for row in stored] == [
        ("wine", [], "fallback", "control"), ("tea", ["pin:Tea promo"], "fallback", "control"),
    ]  # fmt: skip


def test_the_candidate_set_is_stored_when_scoring_fails_before_reading_features(
    api_client, shop, clean_redis, monkeypatch
):
    def broken(**kwargs):
        raise RuntimeError("late")

    monkeypatch.setattr(slates, "slate_score", broken)

    shelf(api_client)

    assert clean_redis.get(redis_keys.user_cache("u1", "candidates")) is not None


def test_degraded_reasons_are_counted(api_client, shop, monkeypatch):
    from prometheus_client import REGISTRY

    def broken(**kwargs):
        raise RuntimeError("late")

    monkeypatch.setattr(slates, "slate_score", broken)
    before = REGISTRY.get_sample_value("surface_degraded_total", {"reason": "score_failed"}) or 0.0

    shelf(api_client)

    assert REGISTRY.get_sample_value("surface_degraded_total", {"reason": "score_failed"}) == before + 1


def test_user_traits_need_a_json_object(api_client):
    response = api_client.put("/api/v1/users/u1", {"traits": ["not", "an", "object"]}, format="json")

    assert response.status_code == 400
    assert "traits" in response.json()["errors"]


def test_preview_shows_the_slate_with_unsaved_rule_edits_and_records_nothing(api_client, shop, clean_redis):
    from surface_app.preview import preview_explain

    Placement.objects.create(name="home", size=3)
    unsaved = BusinessRule(name="Tea promo", kind="pin", item_ids=["tea"], slot=1, campaign="Tea time")

    served, edited = preview_explain(placement="home", user_id="u1", rule_edits=[unsaved])

    assert [item.item_id for item in served.items] == ["wine", "mug-1", "mug-2"]
    assert [item.item_id for item in edited.items] == ["tea", "wine", "mug-1"]
    assert edited.items[0].rules == ("pin:Tea promo",)
    assert not BusinessRule.objects.exists()
    assert clean_redis.get(redis_keys.user_last_slate("u1", "home")) is None  # nothing recorded
    assert not any(clean_redis.scan_iter(match="*caps*"))


def test_preview_of_a_made_up_minor_shows_what_the_compliance_filter_removed(api_client, shop):
    from surface_app.preview import preview_explain

    Placement.objects.create(name="home", size=3)
    BusinessRule.objects.create(
        name="No alcohol for minors", kind="filter",
        condition={"field": "attributes.age_restricted", "op": "eq", "value": True},
        audience={"field": "traits.age", "op": "lt", "value": 18},
    )  # fmt: skip

    served, _ = preview_explain(placement="home", traits={"age": 15}, recent_items=["anchor"])

    assert "wine" not in [item.item_id for item in served.items]
    assert served.removed["wine"] == "filter:No alcohol for minors"


def test_a_short_shelf_is_filled_without_what_the_user_just_viewed(api_client, shop):
    from tests.signals_app.helpers import ingest_views

    Placement.objects.create(name="home", size=20)
    ingest_views({"anchor": 9, "tea": 2})  # the viewed item is also the most popular

    body = shelf(api_client)

    assert "anchor" not in ids(body)
    assert len(ids(body)) == len(set(ids(body)))


def test_a_catalog_change_bumps_the_rules_snapshot_version(clean_redis, django_capture_on_commit_callbacks):
    from graph_app.services import ItemInput, item_upsert

    before = int(clean_redis.get(redis_keys.SURFACE_CONFIG_VERSION) or 0)
    with django_capture_on_commit_callbacks(execute=True):
        item_upsert(data=ItemInput(external_id="new-wine", title="Wine", attributes={"age_restricted": True}))

    assert int(clean_redis.get(redis_keys.SURFACE_CONFIG_VERSION)) == before + 1


def test_a_dry_run_records_nothing_until_it_is_committed(api_client, shop, clean_redis):
    from surface_app.serving.slates import PreviewOptions, slate_commit, slate_preview

    home = Placement.objects.create(name="home", size=2)
    FrequencyCap.objects.create(name="once", scope="item", placement=home, max_impressions=1, window_seconds=3600)
    process_caches_reset(["surface.rules_snapshot"])
    options = PreviewOptions()

    dry = slate_preview(user_key="u1", placement="home", options=options)
    assert clean_redis.get(redis_keys.user_last_slate("u1", "home")) is None
    again = slate_preview(user_key="u1", placement="home", options=PreviewOptions())
    assert ids(dry.as_dict()) == ids(again.as_dict()) == ["wine", "mug-1"]  # no cap was counted

    committed = slate_commit(dry, options)

    assert ids(committed.as_dict()) == ["wine", "mug-1"]
    assert clean_redis.get(redis_keys.user_last_slate("u1", "home")) is not None
    assert ids(shelf(api_client)) == ["mug-2", "mug-3"]  # the cap counted the committed impressions


@pytest.fixture
def trained_shop(django_capture_on_commit_callbacks, clean_redis):
    """Shoppers with a favourite category each, and a ranker trained on their history."""
    from scoring_app.training import ranker_train
    from tests.scoring_app.shop import shop_build

    process_caches_reset(["score.serving_models"])
    with django_capture_on_commit_callbacks(execute=True):
        shop_build()
        ranker_train()
    yield
    process_caches_reset(["score.serving_models"])


def bandit_publish(clean_redis) -> None:
    """An untrained bandit (it learned nothing: a uniform PMF), serving."""
    from graph_app.model_registry.services import model_version_publish
    from scoring_app.engine.bandit import bandit_model_dump, bandit_model_new

    model_version_publish(kind="bandit", artifact=bandit_model_dump(bandit_model_new()), metrics={})
    process_caches_reset(
        ["score.serving_models"]
    )  # published in the test's transaction: read from the database, not the snapshot
    clean_redis.hdel("models:serving", "bandit")


def test_a_shelf_stays_put_without_a_new_event_or_model(trained_shop, clean_redis, settings):
    import time

    from scoring_app.engine.bandit import exploration_window

    bandit_publish(clean_redis)
    settings.SCORE_MIN_RANKER_CONFIDENCE = 1.01  # the ranker unsure, as for most customers of the replayed shop
    settings.SCORE_EXPLORATION_SLOTS = 2

    def window() -> int:
        return exploration_window(
            user_key="user-1", placement="home", now=time.time(), seconds=settings.SCORE_EXPLORATION_RESEED_SECONDS
        )

    before = window()
    first = slates.slate_serve(user_key="user-1", placement="home", k=10)
    # A minute later: the user's candidate set and the process's popular items have expired; nothing else changed.
    clean_redis.delete(redis_keys.user_cache("user-1", "candidates"))
    process_caches_reset(["score.popular_shared"])
    second = slates.slate_serve(user_key="user-1", placement="home", k=10)
    after = window()

    shown = [ids(slate.as_dict()) for slate in (first, second)]
    assert first.path == second.path == "ranker"
    for slate in (first, second):
        explored = [item.item_id for item in slate.items if item.propensity is not None]
        assert len(explored) == 2 and set(explored) == set(slate.bandit.picks)  # logged for learning
    assert len(set(shown[0]) & set(shown[1])) >= 8
    if before == after:  # one exploration window (each user's next one starts at a time of their own)
        assert shown[0] == shown[1]


def test_a_product_page_leads_with_its_items_neighbours_ranked_by_the_ranker(
    trained_shop, clean_redis, django_capture_on_commit_callbacks
):
    import orjson

    from graph_app.neighbourhoods import neighbourhoods_refresh
    from graph_app.neighbourhoods_online import item_neighbours
    from graph_app.similar_lists import similar_lists_refresh

    with django_capture_on_commit_callbacks(execute=True):
        neighbourhoods_refresh(k=5)
    similar_lists_refresh(k=5)
    nearest = {item_id for item_id, _ in orjson.loads(clean_redis.hget(redis_keys.ITEM_SIMILAR_LISTS, "lights-3"))}
    related = nearest | {neighbour.item_id for neighbour in item_neighbours(["lights-3"])["lights-3"]}

    home = ids(slates.slate_serve(user_key="user-0", placement="home", k=10).as_dict())
    page = slates.slate_serve(user_key="user-0", placement="product_page", k=10, context_items=["lights-3"])

    shown = ids(page.as_dict())
    leading = [item for item in page.items if item.item_id in related]
    assert page.path == "ranker"
    assert "lights-3" not in shown
    assert len(leading) >= 4
    assert page.items[: len(leading)] == leading  # the context's neighbours first, the user's own items after
    assert all("context" in item.sources for item in leading)
    assert [item.score for item in leading] == sorted((item.score for item in leading), reverse=True)
    assert shown[: len(leading)] != home[: len(leading)]  # user-0 likes mugs: home leads otherwise


def test_the_context_source_reads_for_itself_what_the_read_ahead_did_not(trained_shop, clean_redis):
    from graph_app.similar_lists import similar_lists_refresh
    from scoring_app.engine import retrieval

    similar_lists_refresh(k=5)
    state = retrieval.user_state_fetch(user_key="user-0", seeds=["lights-3", "bags-1"])

    alone = retrieval._context_source(state)
    retrieval._prefetch_sources(state, retrieval.SOURCES)

    assert "context_rows" in state.prefetched
    assert retrieval._context_source(state) == alone
    assert len(alone) >= 5 and not {"lights-3", "bags-1"} & {candidate.item_id for candidate in alone}
    assert all(candidate.sources == ("context",) for candidate in alone)


def test_an_unknown_placement_is_served_with_the_defaults_and_says_so(api_client, shop):
    Placement.objects.create(name="home", size=3)

    typo = shelf(api_client, placement="homepage")
    known = shelf(api_client, placement="home")

    assert typo["items"] and "placement_unknown" in typo["degraded"]
    assert "placement_unknown" not in known["degraded"]


def test_a_blocked_item_does_not_come_back_through_the_fallbacks(api_client, shop):
    Placement.objects.create(
        name="home", size=3, sources=["similar_to_recent"], fallbacks=["default_list"],
        default_items=["wine", "tea", "mug-1"],
    )  # fmt: skip
    BusinessRule.objects.create(name="No wine", kind="block", item_ids=["wine"])

    body = shelf(api_client, user="stranger")  # no history: only the default list can fill the shelf

    assert ids(body) == ["tea", "mug-1"]
    assert "fallback_default_list" in body["degraded"]
