"""A client generated from the OpenAPI schema by openapi-python-client, as a storefront team makes one, calls every
operation of the API against a live server, with a real API key, and parses every answer."""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import call_command
from drf_spectacular.drainage import GENERATOR_STATS
from prometheus_client import REGISTRY

from personalization.services import api_key_create
from surface_app.fast_path import recommendations_fast_path

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "generated_platform_client"


@pytest.fixture(scope="session")
def generated() -> Iterator[SimpleNamespace]:
    """The client package, generated once a session from what `manage.py spectacular` writes; a warning of the
    generator (an operation or body it cannot generate) fails the session's tests."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="openapi-client-") as workdir:
        schema_path = Path(workdir) / "schema.yaml"
        GENERATOR_STATS.reset()  # the warnings of earlier generations in this process
        call_command("spectacular", "--file", str(schema_path), "--fail-on-warn")
        config = Path(workdir) / "generator.yaml"
        config.write_text("post_hooks: []\n")  # no formatter run over the generated code
        subprocess.run(
            [str(GENERATOR), "generate", "--path", str(schema_path), "--output-path", str(Path(workdir) / PACKAGE),
             "--meta", "none", "--config", str(config), "--fail-on-warning"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        sys.path.insert(0, workdir)
        try:
            yield SimpleNamespace(
                client=importlib.import_module(PACKAGE),
                api=lambda tag: _Operations(f"{PACKAGE}.api.{tag}"),
                models=importlib.import_module(f"{PACKAGE}.models"),
            )
        finally:
            sys.path.remove(workdir)
            for name in [module for module in sys.modules if module.split(".")[0] == PACKAGE]:
                del sys.modules[name]


# Every operation of the schema, each called by a test below.
OPERATIONS = {
    "events": {"events_ingest"},
    "experiments": {"experiment_create", "experiment_get", "experiment_stop", "experiment_list", "experiment_start",
                    "experiment_results"},
    "items": {"item_get", "item_upsert", "item_delete", "items_batch_upsert", "items_batch_patch", "items_batch_delete",
              "items_similar"},
    "recommendations": {"recommendations_get"},
    "segment": {"segment_track", "segment_batch"} | {f"segment_v1_{kind}" for kind in (
        "batch", "track", "identify", "page", "screen", "alias", "group")},
    "users": {"user_traits_put", "user_identify", "user_erase"},
}  # fmt: skip


def test_the_client_has_every_operation_and_the_tests_call_each(generated):
    package = Path(generated.client.__file__).parent / "api"
    generated_operations = {
        tag.name: {module.stem for module in tag.glob("*.py") if module.stem != "__init__"}
        for tag in package.iterdir()
        if tag.is_dir() and tag.name != "__pycache__"
    }

    assert generated_operations == OPERATIONS


class _Operations:
    """A tag's operation modules by name (the generated package does not import them itself)."""

    def __init__(self, package: str) -> None:
        self.package = package

    def __getattr__(self, operation: str) -> Any:
        return importlib.import_module(f"{self.package}.{operation}")


@pytest.fixture
def base_url(live_server) -> Iterator[str]:
    """The live server as gunicorn serves the project (config.wsgi): the recommendations fast path in front of
    Django's handler."""
    httpd = live_server.thread.httpd
    django_application = httpd.get_app()
    httpd.set_app(recommendations_fast_path(django_application))
    yield live_server.url
    httpd.set_app(django_application)


@pytest.fixture
def client(generated, base_url, raw_api_key) -> Any:
    return generated.client.AuthenticatedClient(base_url=base_url, token=raw_api_key, raise_on_unexpected_status=True)


def _item(models: Any, title: str, **fields: Any) -> Any:
    return models.ItemInputRequest(title=title, category="kitchen", description="A mug for tea", **fields)


def test_catalog_operations(generated, client):
    items, models = generated.api("items"), generated.models

    created = items.item_upsert.sync_detailed(
        "mug-1", client=client, body=_item(models, "Blue mug", price="12.50", entities=[
            models.EntityRefRequest(kind="brand", id="acme", name="Acme")])
    )  # fmt: skip
    updated = items.item_upsert.sync_detailed("mug-1", client=client, body=_item(models, "Blue mug, large"))
    batch = items.items_batch_upsert.sync_detailed(
        client=client,
        body=models.ItemBatchRequest(
            items=[
                models.ItemBatchRowRequest(item_id="mug-2", title="Red mug", category="kitchen"),
                models.ItemBatchRowRequest.from_dict({"item_id": "mug-3", "title": ""}),
            ]
        ),
    )
    read = items.item_get.sync_detailed("mug-1", client=client)
    similar = items.items_similar.sync_detailed("mug-1", client=client, k=5)

    assert (created.status_code, created.parsed.item_id, created.parsed.price) == (201, "mug-1", 12.5)
    assert [(entity.kind, entity.id, entity.name) for entity in created.parsed.entities] == [("brand", "acme", "Acme")]
    assert (updated.status_code, updated.parsed.title, updated.parsed.entities) == (200, "Blue mug, large", [])
    assert (batch.status_code, batch.parsed.created, batch.parsed.updated) == (200, 1, 0)
    assert [(error.index, error.field) for error in batch.parsed.errors] == [(1, "title")]
    assert [(row.item_id, row.status.value) for row in batch.parsed.results] == [
        ("mug-2", "created"),
        ("mug-3", "error"),
    ]
    assert (read.status_code, read.parsed.title, read.parsed.embedding_source) == (200, "Blue mug, large", "content")
    assert (similar.status_code, [candidate.item_id for candidate in similar.parsed.items]) == (200, ["mug-2"])

    patched = items.items_batch_patch.sync_detailed(
        client=client,
        body=models.ItemBatchPatchRequest(
            items=[models.ItemPatchRowRequest(item_id="mug-2", price=None, in_stock=False),
                   models.ItemPatchRowRequest(item_id="mug-9", in_stock=True)]
        ),
    )  # fmt: skip
    removed = items.items_batch_delete.sync_detailed(
        client=client, body=models.ItemBatchDeleteRequest(item_ids=["mug-2", "mug-9"])
    )

    assert (patched.status_code, patched.parsed.updated, patched.parsed.missing) == (200, 1, 1)
    assert [(row.item_id, row.status.value) for row in patched.parsed.results] == [
        ("mug-2", "updated"),
        ("mug-9", "missing"),
    ]
    assert (removed.status_code, removed.parsed.deleted, removed.parsed.missing) == (200, 1, ["mug-9"])

    deleted = items.item_delete.sync_detailed("mug-1", client=client)
    gone = items.item_get.sync_detailed("mug-1", client=client)
    bad_k = items.items_similar.sync_detailed("mug-2", client=client, k=0)

    assert deleted.status_code == 204
    assert (gone.status_code, gone.parsed.code, gone.parsed.message) == (404, "not_found", gone.parsed.detail)
    assert (bad_k.status_code, bad_k.parsed.code, list(bad_k.parsed.errors.additional_properties)) == (
        400,
        "invalid",
        ["k"],
    )


def test_events_single_and_batch(generated, client):
    events, models = generated.api("events"), generated.models
    view = {"type_": "view", "user_id": "u-1", "item_id": "mug-1"}

    single = events.events_ingest.sync_detailed(client=client, body=models.EventRequest(event_id="e-1", **view))
    batch = events.events_ingest.sync_detailed(
        client=client,
        body=models.EventBatchRequest(
            events=[
                models.EventRequest(event_id="e-1", **view),
                models.EventRequest(event_id="e-2", **view, placement="home", slot=2, value=1.5),
                models.EventRequest(event_id="e-3", type_="view", item_id="mug-1"),
            ]
        ),
    )

    assert (single.status_code, single.parsed.accepted, single.parsed.duplicates) == (202, 1, 0)
    assert (batch.parsed.accepted, batch.parsed.duplicates, batch.parsed.rejected) == (1, 1, 1)
    assert [(error.index, error.field) for error in batch.parsed.errors] == [(2, "user_id")]


def test_users_traits_identify_and_erase(generated, client):
    users, events, models = generated.api("users"), generated.api("events"), generated.models
    traits = models.UserTraitsInputRequestTraits.from_dict({"age": 34, "tier": "gold"})
    events.events_ingest.sync_detailed(
        client=client, body=models.EventRequest(event_id="s-1", type_="view", session_id="anon-1", item_id="mug-1")
    )

    created = users.user_traits_put.sync_detailed("u-1", client=client, body=models.UserTraitsInputRequest(traits))
    replaced = users.user_traits_put.sync_detailed("u-1", client=client, body=models.UserTraitsInputRequest(traits))
    identified = users.user_identify.sync_detailed(
        "u-1", client=client, body=models.IdentifyInputRequest(session_id="anon-1")
    )

    assert (created.status_code, created.parsed.traits.additional_properties) == (201, {"age": 34, "tier": "gold"})
    assert (replaced.status_code, replaced.parsed.user_id) == (200, "u-1")
    assert (identified.status_code, identified.parsed.session_id, identified.parsed.merged_items) == (200, "anon-1", 1)

    erased = users.user_erase.sync_detailed("u-1", client=client)

    assert (erased.status_code, erased.parsed.user_id, erased.parsed.shoppers, erased.parsed.sessions) == (
        200, "u-1", 1, 1,
    )  # fmt: skip
    assert erased.parsed.redis_keys > 0


def _fast_path_served() -> float:
    return REGISTRY.get_sample_value("surface_api_fast_path_total", {"outcome": "served"}) or 0.0


def test_recommendations_answered_by_the_fast_path_parse_as_the_schema_says(generated, client):
    items, events, recommendations = generated.api("items"), generated.api("events"), generated.api("recommendations")
    models = generated.models
    for name in ("mug-1", "mug-2"):
        items.item_upsert.sync_detailed(name, client=client, body=_item(models, name))
    events.events_ingest.sync_detailed(
        client=client,
        body=models.EventBatchRequest(
            events=[models.EventRequest(event_id=f"p-{n}", type_="purchase", user_id=f"u-{n}", item_id="mug-2")
                    for n in range(3)]
        ),
    )  # fmt: skip
    served_before = _fast_path_served()

    slate = recommendations.recommendations_get.sync_detailed(client=client, user_id="u-new", placement="home", k=2)
    refused = recommendations.recommendations_get.sync_detailed(client=client, placement="home")

    assert _fast_path_served() == served_before + 1  # the first, not the refused query
    assert (slate.status_code, slate.parsed.placement, slate.parsed.path.value) == (200, "home", "fallback")
    assert [item.item_id for item in slate.parsed.items][:1] == ["mug-2"]
    assert slate.parsed.items[0].sources and slate.parsed.request_id
    assert (refused.status_code, list(refused.parsed.errors.additional_properties)) == (400, ["user_id"])


SEGMENT_VIEW = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "anonymousId": "anon-1",
    "properties": {"product_id": "mug-1"},
}


def test_segment_track_and_batch(generated, client):
    segment, models = generated.api("segment"), generated.models

    tracked = segment.segment_track.sync_detailed(client=client, body=models.SegmentCallRequest.from_dict(SEGMENT_VIEW))
    batch = segment.segment_batch.sync_detailed(
        client=client,
        body=models.SegmentBatchRequest(
            batch=[
                models.SegmentCallRequest.from_dict(SEGMENT_VIEW),
                models.SegmentCallRequest.from_dict({**SEGMENT_VIEW, "messageId": "m-2"}),
                models.SegmentCallRequest.from_dict({"type": "identify", "messageId": "m-3", "userId": "u-1",
                                                     "anonymousId": "anon-1"}),
            ]
        ),
    )  # fmt: skip

    assert (tracked.status_code, tracked.parsed.accepted) == (200, 1)
    assert (batch.status_code, batch.parsed.accepted, batch.parsed.duplicates, batch.parsed.rejected) == (200, 2, 1, 0)


def test_experiments_create_read_and_stop(generated, client):
    from surface_app.models import Placement

    experiments, models = generated.api("experiments"), generated.models
    Placement.objects.create(name="home", size=3)
    body = models.ExperimentInputRequest.from_dict({
        "name": "popularity test", "placement": "home", "primary_metric": "ctr",
        "variants": [{"name": "control", "weight": 1, "treatment": {"kind": "current"}},
                     {"name": "popular", "weight": 1, "treatment": {"kind": "popularity"}}],
        "guardrails": {"serving_p99_ms": 80},
    })  # fmt: skip

    created = experiments.experiment_create.sync_detailed(client=client, body=body)
    conflict = experiments.experiment_create.sync_detailed(client=client, body=body)
    read = experiments.experiment_get.sync_detailed(created.parsed.id, client=client)
    stopped = experiments.experiment_stop.sync_detailed(created.parsed.id, client=client)

    assert (created.status_code, created.parsed.status) == (201, "running")
    assert created.parsed.guardrails.serving_p99_ms == 80
    assert (conflict.status_code, conflict.parsed.code) == (409, "conflict")
    assert (read.status_code, [variant.name for variant in read.parsed.variants]) == (200, ["control", "popular"])
    assert (stopped.status_code, stopped.parsed.status) == (200, "stopped")


def test_experiments_list_start_and_results(generated, client):
    from surface_app.models import Placement

    experiments, models = generated.api("experiments"), generated.models
    Placement.objects.create(name="home", size=3)
    body = models.ExperimentInputRequest.from_dict({
        "name": "holdout", "placement": "home", "primary_metric": "rpm", "start": False,
        "variants": [{"name": "control", "weight": 9, "treatment": {"kind": "current"}},
                     {"name": "holdout", "weight": 1, "treatment": {"kind": "popularity"}}],
    })  # fmt: skip
    draft = experiments.experiment_create.sync_detailed(client=client, body=body)

    drafts = experiments.experiment_list.sync_detailed(client=client, status=models.ExperimentListStatus.DRAFT)
    started = experiments.experiment_start.sync_detailed(draft.parsed.id, client=client)
    results = experiments.experiment_results.sync_detailed(draft.parsed.id, client=client)

    assert [row.id for row in drafts.parsed] == [draft.parsed.id]
    assert (started.status_code, started.parsed.status) == (200, "running")
    assert results.status_code == 200
    assert [(variant.name, variant.shoppers) for variant in results.parsed.variants] == [("control", 0), ("holdout", 0)]
    assert (results.parsed.sample_ratio, results.parsed.verdict) == (None, "no difference yet")
    assert results.parsed.lifts[0].metric == "rpm" and results.parsed.lifts[0].cuped is None


SEGMENT_SOURCE_CALLS = {
    "track": {**SEGMENT_VIEW, "messageId": "v1-track"},
    "identify": {"messageId": "v1-identify", "anonymousId": "anon-2", "userId": "u-2", "traits": {"plan": "gold"}},
    "page": {"messageId": "v1-page", "anonymousId": "anon-2", "name": "Home", "properties": {"path": "/"}},
    "screen": {"messageId": "v1-screen", "userId": "u-2", "name": "Cart"},
    "alias": {"messageId": "v1-alias", "previousId": "anon-2", "userId": "u-2"},
    "group": {"messageId": "v1-group", "userId": "u-2", "groupId": "acme", "traits": {"plan": "enterprise"}},
}


def test_segment_source_routes(generated, client, base_url, raw_api_key):
    segment, models = generated.api("segment"), generated.models
    # As a Segment source sends it: the write key as the HTTP Basic user name.
    write_key = base64.b64encode(f"{raw_api_key}:".encode()).decode()
    source = generated.client.Client(base_url=base_url, headers={"Authorization": f"Basic {write_key}"})

    answers = {
        kind: getattr(segment, f"segment_v1_{kind}").sync_detailed(
            client=source, body=models.SegmentCallRequest.from_dict(call)
        )
        for kind, call in SEGMENT_SOURCE_CALLS.items()
    }
    batch = segment.segment_v1_batch.sync_detailed(
        client=client,
        body=models.SegmentBatchRequest(
            batch=[
                models.SegmentCallRequest.from_dict({**SEGMENT_SOURCE_CALLS["track"], "type": "track"}),
                models.SegmentCallRequest.from_dict({**SEGMENT_VIEW, "messageId": "v1-batch"}),
                models.SegmentCallRequest.from_dict({"type": "track", "messageId": "v1-bad"}),
            ]
        ),
    )

    outcomes = {kind: (answer.status_code, answer.parsed.rejected) for kind, answer in answers.items()}
    assert outcomes == dict.fromkeys(SEGMENT_SOURCE_CALLS, (200, 0))
    assert answers["track"].parsed.accepted == 1
    assert (batch.status_code, batch.parsed.accepted, batch.parsed.duplicates, batch.parsed.rejected) == (200, 1, 1, 1)
    assert [error.index for error in batch.parsed.errors] == [2]


def test_over_the_rate_limit_is_a_parsed_429_with_its_headers(generated, base_url):
    recommendations = generated.api("recommendations")
    limited = generated.client.AuthenticatedClient(
        base_url=base_url, token=api_key_create(name="slow storefront", rate_limit_per_second=1).raw_key
    )

    answers = [
        recommendations.recommendations_get.sync_detailed(client=limited, user_id="u-1", placement="home")
        for _ in range(5)  # a token a second: one of them at least finds the bucket empty
    ]
    refused = next(answer for answer in answers if answer.status_code == 429)

    assert (refused.parsed.code, refused.parsed.message) == ("rate_limited", refused.parsed.detail)
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"] == '"key";q=1;w=1'
    assert refused.headers["RateLimit"].startswith('"key";r=0;')


def test_a_wrong_key_is_a_parsed_401(generated, base_url):
    events, models = generated.api("events"), generated.models
    stranger = generated.client.AuthenticatedClient(base_url=base_url, token="pk_unknown_key")

    response = events.events_ingest.sync_detailed(
        client=stranger, body=models.EventRequest(event_id="e-1", type_="view", user_id="u-1", item_id="mug-1")
    )

    assert (response.status_code, response.parsed.code) == (401, "authentication_failed")
