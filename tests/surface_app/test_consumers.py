from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from graph_app.services import ItemInput, item_upsert
from personalization import redis_keys
from personalization.live_updates import catalog_batch
from personalization.process_caches import process_caches_reset
from personalization.services import api_key_create
from signals_app.services import events_ingest
from surface_app.models import BusinessRule, Placement
from surface_app.services import SHELVES_ALL_GROUP, shelves_notify, shelves_placement_changed
from surface_app.serving.slates import CONFIG_VERSION_KEY
from tests.factories import ItemFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture(autouse=True)
def _fresh_rules_snapshot():
    """Each test starts with no rules snapshot: the last one may have been built from another test's rules."""
    process_caches_reset(["surface.rules_snapshot"])
    yield
    process_caches_reset(["surface.rules_snapshot"])


def _setup_catalog() -> str:
    ItemFactory(external_id="a", embedding=[1.0] + [0.0] * 63)
    ItemFactory(external_id="b", embedding=[0.9, 0.1] + [0.0] * 62)
    ItemFactory(external_id="c", embedding=[0.0, 1.0] + [0.0] * 62)
    return api_key_create(name="ws").raw_key


async def _refused(communicator: WebsocketCommunicator) -> tuple[int, str]:
    """(close code, reason) of a refused socket: accepted first, so that the client is told why (a refusal in the
    handshake reaches a browser as a bare HTTP 403)."""
    connected, _ = await communicator.connect()
    assert connected
    closed = await communicator.receive_output(timeout=5)
    assert closed["type"] == "websocket.close"
    return closed["code"], closed.get("reason") or ""


async def test_socket_without_key_is_closed_with_4401_and_says_why():
    communicator = WebsocketCommunicator(application, "/ws/v1/recommendations/?user_id=u1")

    code, reason = await _refused(communicator)

    assert code == 4401 and "API key" in reason


async def test_socket_with_bad_query_is_closed_with_4400_and_says_why():
    key = await sync_to_async(_setup_catalog)()
    communicator = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={key}&k=1000&user_id=u1")

    code, reason = await _refused(communicator)

    assert code == 4400 and "k from 1 to 100" in reason


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


def _create_and_revoke_keys() -> tuple[str, str, object]:
    from personalization.models import ApiKey

    _setup_catalog()
    kept = api_key_create(name="kept", scope="public")
    revoked = api_key_create(name="revoked", scope="public")
    return kept.raw_key, revoked.raw_key, ApiKey.objects.get(pk=revoked.api_key.pk)


async def test_revoking_a_key_closes_its_open_sockets_with_4401_and_no_others():
    from personalization.services import api_key_revoke

    kept_key, revoked_key, revoked = await sync_to_async(_create_and_revoke_keys)()
    sockets = {}
    for name, key in (("kept", kept_key), ("revoked", revoked_key)):
        sockets[name] = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={key}&user_id=u1")
        connected, _ = await sockets[name].connect()
        assert connected
        assert (await sockets[name].receive_json_from(timeout=5))["type"] == "recommendations"

    await sync_to_async(api_key_revoke)(api_key=revoked)

    assert await sockets["revoked"].receive_output(timeout=10) == {"type": "websocket.close", "code": 4401}
    await sync_to_async(shelves_notify)(user_keys={"u1"})  # the kept key's socket is still served
    assert (await sockets["kept"].receive_json_from(timeout=5))["type"] == "recommendations"
    await sockets["kept"].disconnect()
    reopened = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={revoked_key}&user_id=u1")
    assert (await _refused(reopened))[0] == 4401


async def test_a_key_revoked_without_a_broadcast_closes_its_sockets_at_the_next_recheck(monkeypatch):
    """The broadcast can be lost (pub/sub keeps nothing for a process that was reconnecting), or the key revoked in
    the database directly: the process's periodic re-check closes the socket."""
    from django.utils import timezone

    from personalization.models import ApiKey
    from surface_app import consumers

    monkeypatch.setattr(consumers, "KEY_RECHECK_SECONDS", 0.05)
    _kept, revoked_key, revoked = await sync_to_async(_create_and_revoke_keys)()
    communicator = WebsocketCommunicator(application, f"/ws/v1/recommendations/?api_key={revoked_key}&user_id=u1")
    assert (await communicator.connect())[0]
    assert (await communicator.receive_json_from(timeout=5))["type"] == "recommendations"

    await sync_to_async(ApiKey.objects.filter(pk=revoked.pk).update)(revoked_at=timezone.now())

    assert await communicator.receive_output(timeout=10) == {"type": "websocket.close", "code": 4401}


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
    assert (await _refused(evil))[0] == 4401
    await good.disconnect()


async def _shelf(
    key: str, *, user: str = "u1", placement: str = "home", k: int = 2
) -> tuple[WebsocketCommunicator, list[str]]:
    communicator = WebsocketCommunicator(
        application, f"/ws/v1/recommendations/?api_key={key}&user_id={user}&placement={placement}&k={k}"
    )
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_json_from(timeout=5)
    return communicator, [item["item_id"] for item in first["items"]]


def _upsert(external_id: str, *, in_stock: bool = True, price: str = "9.99") -> None:
    item_upsert(
        data=ItemInput(external_id=external_id, title=external_id.title(), price=Decimal(price), in_stock=in_stock)
    )


async def test_an_item_going_out_of_stock_is_pushed_off_the_shelf():
    key = await sync_to_async(_setup_catalog)()
    communicator, shown = await _shelf(key)
    # A new user: the newest items, for exploration.
    assert shown == ["c", "b"]

    await sync_to_async(_upsert)("c", in_stock=False)

    update = await communicator.receive_json_from(timeout=5)
    assert [item["item_id"] for item in update["items"]] == ["b", "a"]
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


async def test_a_new_item_that_outranks_the_shelf_is_pushed():
    key = await sync_to_async(_setup_catalog)()
    communicator, shown = await _shelf(key)
    assert shown == ["c", "b"]

    await sync_to_async(_upsert)("new")

    update = await communicator.receive_json_from(timeout=5)
    assert [item["item_id"] for item in update["items"]] == ["new", "c"]
    await communicator.disconnect()


async def test_changes_to_items_off_the_shelf_send_nothing():
    key = await sync_to_async(_setup_catalog)()
    communicator, shown = await _shelf(key)
    assert "a" not in shown

    await sync_to_async(_upsert)("a", price="19.99")  # not on the shelf
    await sync_to_async(_upsert)("gone", in_stock=False)  # created out of stock: no shelf can show it

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_a_new_item_that_does_not_make_the_shelf_sends_nothing(clean_redis):
    key = await sync_to_async(_setup_catalog)()
    communicator, _ = await _shelf(key, k=1)
    await sync_to_async(events_ingest)(
        raw_events=[{"event_id": "ws-1", "type": "view", "user_id": "u1", "item_id": "a"}]
    )
    await sync_to_async(shelves_notify)(user_keys={"u1"})
    # What is nearest to the item the user viewed.
    assert [item["item_id"] for item in (await communicator.receive_json_from(timeout=5))["items"]] == ["b"]

    await sync_to_async(_upsert)("unrelated")

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_a_batch_of_catalog_changes_is_one_message(clean_redis):
    pubsub = clean_redis.pubsub()
    pubsub.subscribe(f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{SHELVES_ALL_GROUP}")
    pubsub.get_message(timeout=1)  # the subscription's confirmation

    def batch() -> None:
        ItemFactory(external_id="a")
        with catalog_batch():
            for name in ("x", "y", "z"):
                _upsert(name)
            _upsert("a", price="19.99")
            _upsert("y", price="19.99")

    await sync_to_async(batch)()

    message = pubsub.get_message(timeout=1)
    assert get_channel_layer().deserialize(message["data"]) == {
        "type": "shelf.catalog", "changed": ["a"], "appeared": ["x", "y", "z"],
    }  # fmt: skip
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


async def test_a_placement_change_pushes_to_that_placements_shelves_only(clean_redis):
    key = await sync_to_async(_setup_catalog)()
    home, home_shown = await _shelf(key, placement="home")
    cart, cart_shown = await _shelf(key, user="u2", placement="cart")
    assert home_shown == cart_shown == ["c", "b"]

    def block_c_on_home() -> None:
        placement = Placement.objects.create(name="home", size=2)
        BusinessRule.objects.create(name="no c", kind=BusinessRule.Kind.BLOCK, placement=placement, item_ids=["c"])
        clean_redis.incr(CONFIG_VERSION_KEY)
        shelves_placement_changed(placement="home")

    await sync_to_async(block_c_on_home)()

    update = await home.receive_json_from(timeout=5)
    assert [item["item_id"] for item in update["items"]] == ["b", "a"]
    assert await cart.receive_nothing(timeout=0.5)
    await home.disconnect()
    await cart.disconnect()


async def test_a_placement_change_that_leaves_the_slate_alone_sends_nothing():
    key = await sync_to_async(_setup_catalog)()
    communicator, _ = await _shelf(key)

    await sync_to_async(shelves_placement_changed)(placement=None)

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


async def test_the_serving_gate_lets_the_users_own_events_go_before_catalog_changes():
    from surface_app.consumers import PRIORITY_APPEARED, PRIORITY_CHANGE, PRIORITY_USER, _ServingGate, _Waiter

    gate = _ServingGate()
    order: list[str] = []
    release = asyncio.Event()

    async def serve(name: str, waiter: _Waiter, hold: bool = False) -> None:
        async with gate.turn(waiter):
            order.append(name)
            if hold:
                await release.wait()

    first = asyncio.create_task(serve("first", _Waiter(PRIORITY_APPEARED), hold=True))
    await asyncio.sleep(0)
    late_change = _Waiter(PRIORITY_APPEARED)
    waiting = [
        asyncio.create_task(serve("appeared", _Waiter(PRIORITY_APPEARED))),
        asyncio.create_task(serve("changed", _Waiter(PRIORITY_CHANGE))),
        asyncio.create_task(serve("escalated", late_change)),
        asyncio.create_task(serve("user", _Waiter(PRIORITY_USER))),
    ]
    await asyncio.sleep(0)
    late_change.priority = PRIORITY_USER  # the user's event came while it waited for a catalog change
    release.set()
    await asyncio.gather(first, *waiting)

    assert order == ["first", "escalated", "user", "changed", "appeared"]


async def test_a_cancelled_waiter_does_not_keep_the_gate():
    from surface_app.consumers import PRIORITY_USER, _ServingGate, _Waiter

    gate = _ServingGate()
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.turn(_Waiter(PRIORITY_USER)):
            await release.wait()

    async def serve() -> str:
        async with gate.turn(_Waiter(PRIORITY_USER)):
            return "served"

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(serve())
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await holder

    assert await asyncio.wait_for(serve(), timeout=1) == "served"
