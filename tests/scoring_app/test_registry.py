"""The model registry: life-cycle states in PostgreSQL, the serving snapshot in Redis, models hot in memory."""

from __future__ import annotations

import time

import orjson
import pytest
from django.core.exceptions import ValidationError

from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.services import (
    model_version_canary,
    model_version_create,
    model_version_promote,
    model_version_publish,
    model_version_retire,
    model_version_rollback,
)
from personalization import redis_keys
from personalization.process_caches import process_caches_reset
from scoring_app.engine import registry

pytestmark = pytest.mark.django_db
KIND = ModelVersion.Kind.RANKER


@pytest.fixture(autouse=True)
def _echo_loader():
    """A loader that turns an artifact into its text: what serves is visible in assertions."""
    previous = registry._loaders.get(KIND)
    process_caches_reset(["score.serving_models"])
    registry.register_loader(KIND, lambda artifact: artifact.decode())
    yield
    process_caches_reset(["score.serving_models"])
    if previous is not None:
        registry.register_loader(KIND, previous)


def snapshot(clean_redis) -> dict[str, object]:
    return orjson.loads(clean_redis.hget(redis_keys.MODELS_SERVING, KIND))


def create(text: str) -> ModelVersion:
    return model_version_create(kind=KIND, artifact=text.encode(), metrics={"note": text}, feature_names=["a"])


def test_a_new_version_is_a_candidate_and_serves_nobody(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = model_version_publish(kind=KIND, artifact=b"one", metrics={})
        second = create("two")

    assert second.state == ModelVersion.State.CANDIDATE
    assert snapshot(clean_redis) == {"active": first.version, "canary": None, "canary_percent": 0}


def test_promotion_retires_the_active_version_and_rollback_restores_it(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first = model_version_publish(kind=KIND, artifact=b"one", metrics={})
        second = model_version_promote(model_version=create("two"))

    first.refresh_from_db()
    assert (first.state, second.state, second.replaced_version) == ("retired", "active", first.version)
    assert snapshot(clean_redis)["active"] == second.version
    assert clean_redis.get(redis_keys.active_model(KIND)).decode() == second.version

    with django_capture_on_commit_callbacks(execute=True):
        restored = model_version_rollback(kind=KIND)

    second.refresh_from_db()
    assert (restored.version, restored.state, second.state) == (first.version, "active", "retired")
    assert snapshot(clean_redis)["active"] == first.version


def test_rollback_without_an_earlier_version_is_refused():
    model_version_publish(kind=KIND, artifact=b"only", metrics={})

    with pytest.raises(ValidationError) as refused:
        model_version_rollback(kind=KIND)

    assert "kind" in refused.value.message_dict
    assert ModelVersion.objects.get().state == "active"


def test_canary_serves_a_share_of_users_and_a_new_canary_replaces_it(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        model_version_publish(kind=KIND, artifact=b"stable", metrics={})
        early = model_version_canary(model_version=create("early"), percent=5)
        later = model_version_canary(model_version=create("later"), percent=30)

    early.refresh_from_db()
    assert (early.state, early.canary_percent) == ("candidate", 0)
    assert snapshot(clean_redis)["canary"] == later.version
    assert snapshot(clean_redis)["canary_percent"] == 30

    registry.models_refresh()
    served = {user: registry.serving_model(KIND, user_key=user).model for user in (f"u{n}" for n in range(400))}
    canary_users = {user for user, model in served.items() if model == "later"}
    assert set(served.values()) == {"stable", "later"}
    assert canary_users == {user for user in served if registry.user_bucket(user, salt=later.version) < 30}
    assert 0.2 < len(canary_users) / 400 < 0.4


def test_each_canary_splits_the_shoppers_afresh():
    """Salted by the version: a canary's shoppers say nothing about the next canary's."""
    users = [f"u{n}" for n in range(4000)]
    first = {user for user in users if registry.user_bucket(user, salt="ranker-1") < 50}
    second = {user for user in users if registry.user_bucket(user, salt="ranker-2") < 50}

    assert first == {user for user in users if registry.user_bucket(user, salt="ranker-1") < 50}  # stable
    # Independent halves overlap on about a quarter of the shoppers (the same half every time: all of them).
    assert 0.2 < len(first & second) / len(users) < 0.3


@pytest.mark.parametrize("percent", [0, 101])
def test_canary_share_must_be_between_1_and_100(percent):
    with pytest.raises(ValidationError) as refused:
        model_version_canary(model_version=create("x"), percent=percent)
    assert "canary_percent" in refused.value.message_dict


def test_the_active_version_cannot_be_retired_or_canaried():
    active = model_version_publish(kind=KIND, artifact=b"one", metrics={})

    with pytest.raises(ValidationError):
        model_version_retire(model_version=active)
    with pytest.raises(ValidationError):
        model_version_canary(model_version=active, percent=10)
    active.refresh_from_db()
    assert active.state == "active"


@pytest.mark.django_db(transaction=True)  # the loader thread reads committed rows over its own connection
def test_serving_swaps_to_a_promoted_version_in_the_background(clean_redis):
    model_version_publish(kind=KIND, artifact=b"one", metrics={})
    registry.models_observe(clean_redis.hgetall(redis_keys.MODELS_SERVING))  # nothing loaded yet: loads inline
    assert registry.serving_model(KIND, user_key="u").model == "one"

    model_version_promote(model_version=create("two"))
    registry.models_observe(clean_redis.hgetall(redis_keys.MODELS_SERVING))
    # Until the loader thread has the new model, requests go on with the old one (never none).
    assert registry.serving_model(KIND, user_key="u").model in {"one", "two"}
    deadline = time.monotonic() + 60  # bounded, not timed: a busy machine may take long
    while registry.serving_model(KIND, user_key="u").model != "two" and time.monotonic() < deadline:
        time.sleep(0.01)

    assert registry.serving_model(KIND, user_key="u").model == "two"


def test_without_a_snapshot_in_redis_the_active_version_comes_from_the_database(clean_redis):
    model_version_publish(kind=KIND, artifact=b"from-postgres", metrics={})
    clean_redis.delete(redis_keys.MODELS_SERVING)  # e.g. Redis restarted empty

    registry.models_observe({})

    assert registry.serving_model(KIND, user_key="u").model == "from-postgres"


def test_retired_versions_beyond_the_kept_number_are_deleted(monkeypatch):
    from graph_app.model_registry import services

    monkeypatch.setattr(services, "RETIRED_VERSIONS_KEPT", 2)
    versions = [model_version_publish(kind=KIND, artifact=str(n).encode(), metrics={}).version for n in range(5)]

    remaining = set(ModelVersion.objects.values_list("version", flat=True))
    # The active one, the one it replaced (a rollback target), and the two newest retired ones.
    assert remaining == set(versions[-3:])


def test_a_version_missing_from_the_database_keeps_the_current_one_serving(
    clean_redis, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        model_version_publish(kind=KIND, artifact=b"one", metrics={})
    registry.models_refresh()
    ghost = orjson.dumps({"active": "ranker-that-does-not-exist", "canary": None, "canary_percent": 0})

    registry._load(KIND, ghost)

    assert registry.serving_model(KIND, user_key="u").model == "one"
