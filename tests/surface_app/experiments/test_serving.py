"""Experiments in serving, through the API against the live servers: the slate's variant, deterministic, salted
and sticky (across requests and through identify), each treatment's effect, the impression rows, no SQL in the hot
path, and the assignment unit erased with the shopper."""

from __future__ import annotations

from typing import Any

import pytest

from graph_app.online import catalog_online_rebuild
from graph_app.state.models import Impression
from personalization import redis_keys
from personalization.process_caches import process_caches_reset
from signals_app.consumer import events_drain_all
from surface_app.experiments.assignment import VariantWeight, variant_bounds, variant_index
from surface_app.experiments.models import Experiment
from surface_app.experiments.services import experiment_create
from surface_app.models import BusinessRule, Placement
from surface_app.rules_compile import treatment_compile
from surface_app.serving.rules import PlacementConfig
from tests.factories import ItemFactory, unit
from tests.signals_app.helpers import ingest_views

pytestmark = pytest.mark.django_db

URL = "/api/v1/experiments"


@pytest.fixture
def shop(clean_redis):
    """Mugs near the anchor, in decreasing similarity; a bottle of wine; tea; tea and mug-6 are popular."""
    ItemFactory(external_id="anchor", category="mugs", embedding=unit(1, 0))
    for index in range(1, 7):
        ItemFactory(external_id=f"mug-{index}", category="mugs", embedding=unit(1, index * 0.1))
    ItemFactory(external_id="wine", category="drinks", embedding=unit(1, 0.05))
    ItemFactory(external_id="tea", category="drinks", embedding=unit(1, 0.75))
    catalog_online_rebuild()
    ingest_views({"tea": 5, "mug-6": 3})
    Placement.objects.create(name="home", size=2)


def start(*treatments: dict[str, Any], placement: str = "home", salt: str = "salt-1") -> Experiment:
    """A running experiment, variants v0, v1... of equal weights, its salt fixed (so the tests' shoppers are)."""
    variants = [
        {"name": f"v{index}", "weight": 1, "treatment": treatment} for index, treatment in enumerate(treatments)
    ]
    experiment = experiment_create(name="test", placement=placement, primary_metric="ctr", variants=variants)
    Experiment.objects.filter(pk=experiment.pk).update(salt=salt)
    experiment.refresh_from_db()
    return experiment


def variant_of(experiment: Experiment, unit_key: str) -> str:
    weights = [VariantWeight(variant["name"], variant["weight"]) for variant in experiment.variants]
    index = variant_index(salt=experiment.salt, unit=unit_key, bounds=variant_bounds(weights))
    return weights[index].name


def shopper_in(experiment: Experiment, variant: str, prefix: str = "u") -> str:
    """The first of prefix0, prefix1... whose own key lands in the variant."""
    return next(f"{prefix}{n}" for n in range(1000) if variant_of(experiment, f"{prefix}{n}") == variant)


def recommend(api_client, placement: str = "home", **shopper: str) -> dict:
    process_caches_reset(["surface.rules_snapshot"])  # written in this test's transaction: compiled inline
    response = api_client.get("/api/v1/recommendations", {"placement": placement, **shopper})
    assert response.status_code == 200
    return response.json()


def ids(body: dict) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def with_history(clean_redis, user: str) -> str:
    clean_redis.lpush(redis_keys.user_recent_items(user), "anchor")
    return user


def test_the_slate_names_the_shoppers_variant_the_same_on_every_request(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "current"})
    shoppers = [f"u{n}" for n in range(12)]

    first = {user: recommend(api_client, user_id=user)["experiment"] for user in shoppers}
    again = {user: recommend(api_client, user_id=user)["experiment"] for user in shoppers}

    assert first == again == {user: {"id": experiment.pk, "variant": variant_of(experiment, user)} for user in shoppers}
    assert {entry["variant"] for entry in first.values()} == {"v0", "v1"}
    # Served in the experiment: the unit it was assigned by is kept.
    assert clean_redis.get(redis_keys.user_assignment_unit("u0")) == b"u0"


def test_two_experiments_split_the_same_shoppers_independently(api_client, shop):
    Placement.objects.create(name="cart", size=2)
    home = start({"kind": "current"}, {"kind": "current"}, salt="home-salt")
    cart = start({"kind": "current"}, {"kind": "current"}, placement="cart", salt="cart-salt")
    shoppers = [f"u{n}" for n in range(40)]

    pairs = [
        (recommend(api_client, user_id=user)["experiment"]["variant"],
         recommend(api_client, "cart", user_id=user)["experiment"]["variant"])
        for user in shoppers
    ]  # fmt: skip

    assert pairs == [(variant_of(home, user), variant_of(cart, user)) for user in shoppers]
    # Every combination occurs: a shopper's variant in one says nothing of the other (unsalted, they would agree).
    assert {pair: pairs.count(pair) for pair in set(pairs)}.keys() == {
        ("v0", "v0"), ("v0", "v1"), ("v1", "v0"), ("v1", "v1"),
    }  # fmt: skip
    # Over many shoppers the split is independent: agreement near one half.
    many = [f"shopper-{n}" for n in range(4000)]
    agree = sum(variant_of(home, user) == variant_of(cart, user) for user in many) / len(many)
    assert 0.45 < agree < 0.55


def test_an_anonymous_sessions_variant_holds_after_identify(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "current"})
    # A session and a user whose own keys land in different variants.
    session = next(
        f"s-{n}" for n in range(1000) if variant_of(experiment, f"session:s-{n}") != variant_of(experiment, "alice")
    )
    anonymous = recommend(api_client, session_id=session)
    before = anonymous["experiment"]

    response = api_client.post("/api/v1/users/alice/identify", {"session_id": session}, format="json")
    known = recommend(api_client, user_id="alice")
    after = known["experiment"]
    while events_drain_all().read:
        pass

    assert response.status_code == 200
    assert after == before == {"id": experiment.pk, "variant": variant_of(experiment, f"session:{session}")}
    assert clean_redis.get(redis_keys.user_assignment_unit("alice")) == f"session:{session}".encode()
    # Both slates are logged under the one unit: the results count one shopper.
    logged = Impression.objects.filter(request_id__in=[anonymous["request_id"], known["request_id"]])
    assert {(row.user_key, row.experiment_unit) for row in logged} == {
        (f"session:{session}", f"session:{session}"), ("alice", f"session:{session}"),
    }  # fmt: skip


def test_an_event_with_both_ids_identifies_and_the_sessions_variant_holds(api_client, shop):
    experiment = start({"kind": "current"}, {"kind": "current"})
    session = next(
        f"s-{n}" for n in range(1000) if variant_of(experiment, f"session:s-{n}") != variant_of(experiment, "erin")
    )
    before = recommend(api_client, session_id=session)["experiment"]
    view = {"event_id": "e-1", "type": "view", "user_id": "erin", "session_id": session, "item_id": "tea"}

    assert api_client.post("/api/v1/events", view, format="json").status_code == 202

    assert recommend(api_client, user_id="erin")["experiment"] == before


def test_a_user_already_served_keeps_their_variant_after_identify(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "current"})
    session = next(
        f"s-{n}" for n in range(1000) if variant_of(experiment, f"session:s-{n}") != variant_of(experiment, "bob")
    )
    served = recommend(api_client, user_id="bob")["experiment"]
    recommend(api_client, session_id=session)

    api_client.post("/api/v1/users/bob/identify", {"session_id": session}, format="json")

    assert recommend(api_client, user_id="bob")["experiment"] == served
    assert served["variant"] == variant_of(experiment, "bob")


def test_a_session_never_served_in_an_experiment_leaves_the_users_unit_free(api_client, shop, clean_redis):
    api_client.post("/api/v1/users/carol/identify", {"session_id": "s-quiet"}, format="json")

    assert clean_redis.get(redis_keys.user_assignment_unit("carol")) is None


def test_the_popularity_holdout_serves_the_popular_items_without_personalization(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "popularity"})
    personal = with_history(clean_redis, shopper_in(experiment, "v0"))
    holdout = with_history(clean_redis, shopper_in(experiment, "v1"))

    current = recommend(api_client, user_id=personal)
    popular = recommend(api_client, user_id=holdout)

    assert (current["path"], ids(current)) == ("fallback", ["wine", "mug-1"])  # the anchor's neighbours
    assert (popular["path"], ids(popular)) == ("popularity", ["tea", "mug-6"])
    assert {source for item in popular["items"] for source in item["sources"]} == {"popular"}
    assert popular["degraded"] == [] and popular["confidence"] == 0.0


def test_the_popularity_holdout_still_applies_the_placements_rules(api_client, shop, clean_redis):
    BusinessRule.objects.create(name="Wine first", kind="pin", placement=Placement.objects.get(name="home"),
                                item_ids=["wine"], slot=1, campaign="Wine week")  # fmt: skip
    experiment = start({"kind": "current"}, {"kind": "popularity"})

    body = recommend(api_client, user_id=shopper_in(experiment, "v1"))

    assert (body["path"], ids(body)) == ("popularity", ["wine", "tea"])
    assert body["items"][0]["rules"] == ["pin:Wine first"]


def test_a_sources_treatment_replaces_the_retrieval_sources(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "sources", "sources": ["popular"]})
    treated = with_history(clean_redis, shopper_in(experiment, "v1"))

    body = recommend(api_client, user_id=treated)

    assert ids(body) == ["tea", "mug-6"]
    assert {source for item in body["items"] for source in item["sources"]} == {"popular"}


def test_a_rules_treatment_applies_another_placements_rules_instead(api_client, shop, clean_redis):
    home = Placement.objects.get(name="home")
    alternative = Placement.objects.create(name="home-b", enabled=False)  # built by a merchandiser, not served
    BusinessRule.objects.create(name="No wine", kind="block", placement=home, item_ids=["wine"])
    BusinessRule.objects.create(name="Tea first", kind="pin", placement=alternative, item_ids=["tea"], slot=1,
                                campaign="Tea time")  # fmt: skip
    experiment = start({"kind": "current"}, {"kind": "rules", "rule_set": "home-b"})
    control = with_history(clean_redis, shopper_in(experiment, "v0"))
    treated = with_history(clean_redis, shopper_in(experiment, "v1"))

    assert ids(recommend(api_client, user_id=control)) == ["mug-1", "mug-2"]  # home's block, no pin
    body = recommend(api_client, user_id=treated)
    assert ids(body) == ["tea", "wine"]  # home-b's pin, and not home's block
    assert body["items"][0]["rules"] == ["pin:Tea first"]


def test_a_rules_treatments_fallback_replaces_the_first_step_of_the_chain():
    config = PlacementConfig(name="home", fallbacks=("popular", "session", "last_slate", "default_list"))

    treated = treatment_compile(treatment={"kind": "rules", "fallback": "default_list"}, config=config)

    assert treated.config is not None
    assert treated.config.fallbacks == ("default_list", "session", "last_slate")
    assert treated.rules_of is None


def test_a_model_treatment_serves_its_bandit_version_once_loaded(api_client, shop, clean_redis):
    from graph_app.interface import model_version_create
    from scoring_app.engine.bandit import bandit_model_dump, bandit_model_new
    from scoring_app.interface import models_preload
    from tests.surface_app.test_slates import bandit_publish

    Placement.objects.filter(name="home").update(scorer="bandit")
    bandit_publish(clean_redis)
    candidate = model_version_create(kind="bandit", artifact=bandit_model_dump(bandit_model_new()), metrics={})
    experiment = start({"kind": "current"}, {"kind": "model", "version": candidate.version})
    control = with_history(clean_redis, shopper_in(experiment, "v0"))
    treated = with_history(clean_redis, shopper_in(experiment, "v1"))
    active = recommend(api_client, user_id=control)["model_version"]

    models_preload(versions={candidate.version: "bandit"}, wait=True)  # what the snapshot's rebuild starts
    body = recommend(api_client, user_id=treated)

    assert active not in (None, candidate.version)
    assert (body["path"], body["model_version"]) == ("bandit", candidate.version)
    assert "experiment_model_loading" not in body["degraded"]
    assert recommend(api_client, user_id=control)["model_version"] == active


def test_a_model_treatment_not_loaded_yet_serves_the_current_model_and_says_so(api_client, shop, clean_redis):
    from graph_app.interface import model_version_create
    from scoring_app.engine.bandit import bandit_model_dump, bandit_model_new
    from tests.surface_app.test_slates import bandit_publish

    Placement.objects.filter(name="home").update(scorer="bandit")
    bandit_publish(clean_redis)
    candidate = model_version_create(kind="bandit", artifact=bandit_model_dump(bandit_model_new()), metrics={})
    experiment = start({"kind": "current"}, {"kind": "model", "version": candidate.version})
    treated = with_history(clean_redis, shopper_in(experiment, "v1"))
    process_caches_reset(["score.serving_models"])  # nothing loaded: this process has just started

    body = recommend(api_client, user_id=treated)

    assert body["model_version"] != candidate.version
    assert "experiment_model_loading" in body["degraded"]


def test_an_embeddings_version_is_refused_naming_the_field(api_client, shop):
    from graph_app.interface import model_version_create

    version = model_version_create(kind="embeddings", artifact=b"vectors", metrics={}).version
    variants = [
        {"name": "a", "weight": 1, "treatment": {"kind": "current"}},
        {"name": "b", "weight": 1, "treatment": {"kind": "model", "version": version}},
    ]

    response = api_client.post(
        URL, {"name": "e", "placement": "home", "primary_metric": "ctr", "variants": variants}, format="json"
    )

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["variants.1.treatment.version"]
    assert "side by side" in response.json()["errors"]["variants.1.treatment.version"][0]


def test_a_rule_set_must_name_a_placement(api_client, shop):
    variants = [
        {"name": "a", "weight": 1, "treatment": {"kind": "current"}},
        {"name": "b", "weight": 1, "treatment": {"kind": "rules", "rule_set": "nowhere"}},
    ]

    response = api_client.post(
        URL, {"name": "e", "placement": "home", "primary_metric": "ctr", "variants": variants}, format="json"
    )

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["variants.1.treatment.rule_set"]


def test_outside_an_experiment_and_after_its_stop_the_slate_says_null(api_client, shop):
    assert recommend(api_client, user_id="u1")["experiment"] is None
    experiment = start({"kind": "current"}, {"kind": "popularity"})
    assert recommend(api_client, user_id="u1")["experiment"] is not None

    assert api_client.post(f"{URL}/{experiment.pk}/stop").status_code == 200

    body = recommend(api_client, user_id="u1")
    assert body["experiment"] is None and body["path"] != "popularity"
    assert recommend(api_client, "cart", user_id="u1")["experiment"] is None  # another placement: never in it


def test_impression_rows_record_the_experiment_and_variant(api_client, shop, clean_redis):
    experiment = start({"kind": "current"}, {"kind": "popularity"})
    holdout = shopper_in(experiment, "v1")

    body = recommend(api_client, user_id=holdout)
    outside = recommend(api_client, "cart", user_id=holdout)
    while events_drain_all().read:
        pass

    rows = list(Impression.objects.filter(request_id=body["request_id"]).order_by("slot"))
    assert [(row.item_id, row.experiment_id, row.experiment_variant, row.path) for row in rows] == [
        ("tea", experiment.pk, "v1", "popularity"), ("mug-6", experiment.pk, "v1", "popularity"),
    ]  # fmt: skip
    assert all(row.serving_ms is not None and row.serving_ms > 0 and row.degraded is False for row in rows)
    others = Impression.objects.filter(request_id=outside["request_id"])
    assert others.exists() and {(row.experiment_id, row.experiment_variant) for row in others} == {(None, "")}


def test_no_sql_in_the_hot_path_with_an_experiment_running(api_client, shop, clean_redis, django_assert_num_queries):
    experiment = start({"kind": "current"}, {"kind": "popularity"})
    personal = with_history(clean_redis, shopper_in(experiment, "v0"))
    holdout = shopper_in(experiment, "v1")
    recommend(api_client, user_id=personal)  # compiles the snapshot; warms the key's and the shared caches
    recommend(api_client, user_id=holdout)

    with django_assert_num_queries(0):
        again = api_client.get("/api/v1/recommendations", {"placement": "home", "user_id": personal}).json()
    with django_assert_num_queries(0):
        popular = api_client.get("/api/v1/recommendations", {"placement": "home", "user_id": holdout}).json()

    assert (again["experiment"]["variant"], popular["experiment"]["variant"]) == ("v0", "v1")


def test_erasure_removes_the_assignment_unit(api_client, shop, clean_redis):
    from rest_framework.test import APIClient

    from personalization.services import api_key_create

    start({"kind": "current"}, {"kind": "current"})
    recommend(api_client, session_id="s-dora")
    api_client.post("/api/v1/users/dora/identify", {"session_id": "s-dora"}, format="json")
    recommend(api_client, user_id="dora")
    units = [redis_keys.user_assignment_unit("dora"), redis_keys.user_assignment_unit("session:s-dora")]
    assert clean_redis.exists(*units) == 2
    server = APIClient()
    server.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key_create(name='back end', scope='server').raw_key}")

    assert server.delete("/api/v1/users/dora").status_code == 200

    assert clean_redis.exists(*units) == 0


@pytest.mark.django_db(transaction=True)
def test_serving_processes_switch_once_they_observe_the_configuration_version(
    api_client, shop, clean_redis, monkeypatch
):
    """Committed for real: start and stop bump the configuration version after commit, and a serving process
    rebuilds its snapshot in the background when it reads a new one (the request that notices still serves the
    snapshot it has)."""
    import threading

    from surface_app.serving import rules

    monkeypatch.setattr(rules, "REBUILD_MIN_INTERVAL_SECONDS", 0.0)  # a process otherwise waits 2 s between builds

    def served() -> dict | None:
        return api_client.get("/api/v1/recommendations", {"placement": "home", "user_id": "u1"}).json()["experiment"]

    def rebuilt() -> None:
        for thread in threading.enumerate():
            if thread.name == "rules-snapshot":
                thread.join()

    assert served() is None
    before = int(clean_redis.get(redis_keys.SURFACE_CONFIG_VERSION) or 0)
    variants = [{"name": "a", "weight": 1, "treatment": {"kind": "current"}},
                {"name": "b", "weight": 1, "treatment": {"kind": "popularity"}}]  # fmt: skip
    created = api_client.post(URL, {"name": "e", "placement": "home", "primary_metric": "ctr", "variants": variants},
                              format="json").json()  # fmt: skip
    assert int(clean_redis.get(redis_keys.SURFACE_CONFIG_VERSION)) == before + 1

    served()  # notices the new version: the rebuild starts
    rebuilt()
    running = served()
    assert running is not None and running["id"] == created["id"]

    api_client.post(f"{URL}/{created['id']}/stop")
    assert int(clean_redis.get(redis_keys.SURFACE_CONFIG_VERSION)) == before + 2
    served()
    rebuilt()
    assert served() is None


@pytest.fixture
def ranked_shop(django_capture_on_commit_callbacks, clean_redis):
    """Shoppers with a favourite category each, and a ranker trained on their history (`test_slates`' shop)."""
    from scoring_app.training import ranker_train
    from tests.scoring_app.shop import shop_build

    process_caches_reset(["score.serving_models"])
    with django_capture_on_commit_callbacks(execute=True):
        shop_build()
        ranker_train()
    yield
    process_caches_reset(["score.serving_models"])


def test_a_model_treatment_serves_its_ranker_version_to_its_shoppers_only(ranked_shop, clean_redis):
    from graph_app.interface import model_artifact, model_version_active, model_version_create
    from scoring_app.interface import models_preload
    from surface_app.serving import slates

    active = model_version_active(kind="ranker")
    # Another version of the ranker (the same trees: what matters here is which version serves whom).
    candidate = model_version_create(kind="ranker", artifact=model_artifact(version=active.version), metrics={},
                                     feature_names=active.feature_names)  # fmt: skip
    Placement.objects.create(name="home", size=5)
    experiment = start({"kind": "current"}, {"kind": "model", "version": candidate.version})
    models_preload(versions={candidate.version: "ranker"}, wait=True)
    process_caches_reset(["surface.rules_snapshot"])
    shoppers = [f"user-{number}" for number in range(30)]

    served = {user: slates.slate_serve(user_key=user, placement="home") for user in shoppers}

    assert {slate.path for slate in served.values()} == {"ranker"}
    assert {user: slate.model_version for user, slate in served.items()} == {
        user: candidate.version if variant_of(experiment, user) == "v1" else active.version for user in shoppers
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_live_shelf_sends_the_variant_with_the_slate(clean_redis):
    from asgiref.sync import sync_to_async
    from channels.testing import WebsocketCommunicator

    from config.asgi import application
    from personalization.services import api_key_create

    def prepare() -> tuple[str, Experiment]:
        for name, vector in (("a", unit(1, 0)), ("b", unit(1, 0.1)), ("c", unit(0, 1))):
            ItemFactory(external_id=name, embedding=vector)
        Placement.objects.create(name="home", size=2)
        return api_key_create(name="ws").raw_key, start({"kind": "current"}, {"kind": "current"})

    key, experiment = await sync_to_async(prepare)()
    communicator = WebsocketCommunicator(
        application, f"/ws/v1/recommendations/?api_key={key}&user_id=u1&placement=home&k=2"
    )
    connected, _ = await communicator.connect()

    first = await communicator.receive_json_from(timeout=5)

    assert connected and first["type"] == "recommendations"
    assert first["experiment"] == {"id": experiment.pk, "variant": variant_of(experiment, "u1")}
    await communicator.disconnect()


def test_the_consoles_preview_names_the_shoppers_variant(client, django_user_model, shop):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("merchandiser", password="pw", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(content_type__app_label="surface_app",
                                                      codename="view_businessrule"))  # fmt: skip
    client.force_login(staff)
    experiment = start({"kind": "current"}, {"kind": "popularity"})
    holdout = shopper_in(experiment, "v1")

    page = client.post("/admin/console/preview/", {"placement": "home", "user_id": holdout, "rule-kind": ""})

    assert page.status_code == 200
    assert f'<dd class="meta-experiment">#{experiment.pk}: v1</dd>' in page.content.decode()
    assert page.context["columns"][0].result.path == "popularity"
