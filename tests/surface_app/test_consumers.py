from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from personalization import redis_keys
from personalization.services import api_key_create
from signals_app.services import events_ingest
from surface_app.services import shelves_notify
from tests.factories import ItemFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _setup_catalog() -> str:
    ItemFactory(external_id="a", embedding=[1.0] + [0.0] * 63)
    ItemFactory(external_id="b", embedding=[0.9, 0.1] + [0.0] * 62)
    ItemFactory(external_id="c", embedding=[0.0, 1.0] + [0.0] * 62)
    return api_key_create(name="ws").raw_key


async def test_socket_without_key_is_closed_with_4401():
    communicator = WebsocketCommunicator(application, "/ws/v1/recommendations/?user_id=u1")

    connected, code = await communicator.connect()

    assert (connected, code) == (False, 4401)


async def test_socket_with_bad_query_is_closed_with_4400():
    key = await sync_to_async(_setup_catalog)()
    communicator = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={key}&k=1000&user_id=u1")

    connected, code = await communicator.connect()

    assert (connected, code) == (False, 4400)


async def test_socket_sends_a_shelf_and_a_fresh_one_after_the_users_events(clean_redis):
    key = await sync_to_async(_setup_catalog)()
    communicator = WebsocketCommunicator(
        application, f"/ws/v1/recommendations/?api_key={key}&user_id=u1&placement=home&k=2"
    )
    connected, _ = await communicator.connect()
    assert connected

    first = await communicator.receive_json_from(timeout=5)
    assert first["type"] == "recommendations"
    assert first["placement"] == "home"
    # A new user and no popularity yet: only the newest items, for exploration.
    assert {item["source"] for item in first["items"]} == {"fresh"}

    report = await sync_to_async(events_ingest)(
        raw_events=[{"event_id": "ws-1", "type": "view", "user_id": "u1", "item_id": "a"}]
    )
    await sync_to_async(shelves_notify)(user_keys={event.user_key for event in report.accepted_events})

    update = await communicator.receive_json_from(timeout=5)
    assert [item["item_id"] for item in update["items"]] == ["b", "c"]
    assert update["items"][0]["source"] == "similar"
    assert clean_redis.lrange(redis_keys.user_recent_items("u1"), 0, -1) == [b"a"]
    await communicator.disconnect()


async def test_other_users_events_do_not_push_to_this_socket():
    key = await sync_to_async(_setup_catalog)()
    communicator = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={key}&user_id=u1")
    await communicator.connect()
    await communicator.receive_json_from(timeout=5)

    await sync_to_async(shelves_notify)(user_keys={"someone-else"})

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()
    await asyncio.sleep(0)


async def test_staff_session_socket_needs_a_trusted_origin(settings):
    from django.contrib.auth import get_user_model
    from django.test import Client

    def staff_cookie() -> str:
        _setup_catalog()
        staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
        client = Client()
        client.force_login(staff)
        return f"sessionid={client.cookies['sessionid'].value}"

    cookie = await sync_to_async(staff_cookie)()
    trusted = settings.CSRF_TRUSTED_ORIGINS[0]
    path = "/ws/v1/recommendations/?user_id=u1"

    good = WebsocketCommunicator(
        application, path, headers=[(b"cookie", cookie.encode()), (b"origin", trusted.encode())]
    )
    evil = WebsocketCommunicator(
        application, path, headers=[(b"cookie", cookie.encode()), (b"origin", b"https://evil.example")]
    )

    assert (await good.connect())[0] is True
    assert (await good.receive_json_from(timeout=5))["type"] == "recommendations"
    assert await evil.connect() == (False, 4401)
    await good.disconnect()
