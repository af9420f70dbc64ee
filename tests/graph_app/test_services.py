"""The catalog's and users' write services (the ones not covered through their APIs)."""

from __future__ import annotations

import orjson
import pytest

from graph_app.models import Shopper
from graph_app.services import shopper_traits_merge
from personalization import redis_keys

pytestmark = pytest.mark.django_db


def test_merging_traits_keeps_the_others_and_replaces_those_sent(clean_redis, django_capture_on_commit_callbacks):
    Shopper.objects.create(external_id="u1", traits={"age": 30, "plan": "silver"})

    with django_capture_on_commit_callbacks(execute=True):
        shopper_traits_merge(external_id="u1", traits={"plan": "gold", "email": "u1@example.com"})

    expected = {"age": 30, "plan": "gold", "email": "u1@example.com"}
    assert Shopper.objects.get(external_id="u1").traits == expected
    assert orjson.loads(clean_redis.get(redis_keys.user_traits("u1"))) == expected  # what serving reads


def test_merging_traits_creates_a_new_user(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        shopper_traits_merge(external_id="new", traits={"plan": "gold"})

    assert Shopper.objects.get(external_id="new").traits == {"plan": "gold"}
    assert orjson.loads(clean_redis.get(redis_keys.user_traits("new"))) == {"plan": "gold"}


def test_merged_traits_reach_serving_only_after_commit(clean_redis, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        shopper_traits_merge(external_id="u1", traits={"plan": "gold"})

    assert clean_redis.get(redis_keys.user_traits("u1")) is None
    assert len(callbacks) == 1


@pytest.mark.parametrize("store", ["set", "merge"])
def test_traits_serving_cannot_hold_are_refused_before_anything_is_stored(store, clean_redis):
    from graph_app.services import shopper_traits_set
    from personalization.errors import ApplicationError

    write = shopper_traits_set if store == "set" else shopper_traits_merge

    with pytest.raises(ApplicationError) as refused:
        write(external_id="u1", traits={"age": 2**64})

    assert refused.value.errors == {"traits": ["Integers must fit in 64 bits (signed)."]}
    assert not Shopper.objects.filter(external_id="u1").exists()


def test_the_traits_api_answers_400_naming_traits_for_an_integer_serving_cannot_hold(api_client, clean_redis):
    response = api_client.put("/api/v1/users/u1", {"traits": {"age": 2**64}}, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == {"traits.age": ["Integers must fit in 64 bits (signed)."]}
    assert clean_redis.get(redis_keys.user_traits("u1")) is None
