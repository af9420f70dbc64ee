"""Every endpoint that takes JSON holds it to the same bounds: nesting and integers that could not be stored or
served are 400 naming where they were, never a 500, and nothing is written."""

from __future__ import annotations

import pytest

from graph_app.models import Item, Shopper
from personalization import redis_keys
from personalization.validation import JSON_MAX_DEPTH
from tests.signals_app.helpers import stream_lengths

pytestmark = pytest.mark.django_db

DEEP = 10_000
TOO_DEEP = f"Must not be nested deeper than {JSON_MAX_DEPTH} levels."
TOO_WIDE = "Integers must fit in 64 bits (signed)."


def deep_json(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def put_json(client, path: str, body: str):
    return client.generic("PUT", path, body, content_type="application/json")


def post_json(client, path: str, body: str):
    return client.generic("POST", path, body, content_type="application/json")


def test_item_attributes_ten_thousand_deep_are_400_and_no_item_is_stored(api_client):
    response = put_json(api_client, "/api/v1/items/sku-1", '{"title": "T", "attributes": ' + deep_json(DEEP) + "}")

    assert response.status_code == 400
    assert response.json()["errors"] == {"body": [TOO_DEEP]}
    assert not Item.objects.exists()


def test_item_attributes_past_the_bound_name_the_attribute(api_client):
    response = put_json(
        api_client, "/api/v1/items/sku-1", '{"title": "T", "attributes": ' + deep_json(JSON_MAX_DEPTH) + "}"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"attributes" + ".a" * (JSON_MAX_DEPTH - 1): [TOO_DEEP]}
    assert not Item.objects.exists()


def test_traits_ten_thousand_deep_or_beyond_64_bits_are_400_and_nothing_is_stored(api_client, clean_redis):
    deep = put_json(api_client, "/api/v1/users/u1", '{"traits": ' + deep_json(DEEP) + "}")
    wide = put_json(api_client, "/api/v1/users/u1", '{"traits": {"age": 123456789012345678901234567890}}')

    assert deep.status_code == wide.status_code == 400
    assert deep.json()["errors"] == {"body": [TOO_DEEP]}
    assert wide.json()["errors"] == {"traits.age": [TOO_WIDE]}
    assert not Shopper.objects.exists()
    assert clean_redis.get(redis_keys.user_traits("u1")) is None


def test_a_batch_item_past_the_bounds_is_400_naming_its_index(api_client):
    wide = '{"item_id": "x", "title": "T", "attributes": {"n": 9223372036854775808}}'
    body = '{"items": [{"item_id": "ok", "title": "T"}, ' + wide + "]}"

    response = post_json(api_client, "/api/v1/items/batch", body)

    assert response.status_code == 400
    assert response.json()["errors"] == {"items[1].attributes.n": [TOO_WIDE]}
    assert not Item.objects.exists()


def test_numbers_that_are_not_json_are_400(api_client):
    response = put_json(api_client, "/api/v1/items/sku-1", '{"title": "T", "price": NaN}')
    overflow = put_json(api_client, "/api/v1/items/sku-1", '{"title": "T", "attributes": {"w": 1e400}}')

    assert response.status_code == overflow.status_code == 400
    assert list(response.json()["errors"]) == ["body"]
    assert overflow.json()["errors"] == {"attributes.w": ["Numbers must be finite."]}


def test_an_event_context_past_the_bounds_is_400_and_nothing_is_ingested(api_client, clean_redis):
    event = '{"event_id": "e-1", "type": "view", "user_id": "u1", "item_id": "i", "context": '
    deep = post_json(api_client, "/api/v1/events", event + deep_json(DEEP) + "}")
    nested = post_json(api_client, "/api/v1/events", event + deep_json(JSON_MAX_DEPTH) + "}")
    wide = post_json(api_client, "/api/v1/events", '{"events": [' + event + '{"n": 18446744073709551615}}]}')

    assert (deep.status_code, nested.status_code, wide.status_code) == (400, 400, 400)
    assert list(deep.json()["errors"]) == ["body"]
    assert list(nested.json()["errors"]) == ["context" + ".a" * (JSON_MAX_DEPTH - 1)]
    assert wide.json()["errors"] == {"events[0].context.n": [TOO_WIDE]}
    assert stream_lengths() == 0


def test_segment_traits_past_the_bounds_are_400(api_client, clean_redis):
    body = '{"userId": "u1", "messageId": "m-1", "traits": ' + deep_json(JSON_MAX_DEPTH) + "}"

    response = post_json(api_client, "/api/v1/segment/v1/identify", body)

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["traits" + ".a" * (JSON_MAX_DEPTH - 1)]
    assert not Shopper.objects.exists()


def test_a_stored_number_jsonb_would_give_back_as_a_too_wide_integer_is_400(api_client):
    # jsonb keeps 1e300 as a numeric and gives it back as a 301-digit integer, which serving cannot encode.
    response = put_json(api_client, "/api/v1/items/sku-1", '{"title": "T", "attributes": {"score": 1e300}}')

    assert response.status_code == 400
    assert response.json()["errors"] == {"attributes": ["Numbers must be within the signed 64-bit range. (at score)"]}
    assert not Item.objects.exists()


def test_an_event_context_number_too_wide_to_store_rejects_that_event_only(api_client):
    events = (
        '{"events": [{"event_id": "e-1", "type": "view", "user_id": "u1", "item_id": "i", "context": {"n": 1e300}},'
    )
    events += ' {"event_id": "e-2", "type": "view", "user_id": "u1", "item_id": "i", "context": {"n": 1.5}}]}'

    response = post_json(api_client, "/api/v1/events", events)

    assert response.status_code == 202
    assert (response.json()["accepted"], response.json()["rejected"]) == (1, 1)
    assert response.json()["errors"][0]["field"] == "context"


def test_a_traits_number_too_wide_to_store_is_400_naming_traits(api_client, clean_redis):
    response = put_json(api_client, "/api/v1/users/u1", '{"traits": {"score": -1e300}}')

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["traits"]
    assert not Shopper.objects.exists()
