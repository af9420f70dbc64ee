"""Which key may call what (`personalization.access`, `personalization.authentication`): every endpoint of
config/urls.py declares its scope, and a key of each scope is let in or refused (403) accordingly."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from config.asgi import application
from personalization.access import OPEN, STAFF_SESSION, shopper_token_sign
from personalization.models import SCOPE_RANKS, ApiScope
from personalization.services import api_key_create
from tests.factories import ItemFactory

pytestmark = pytest.mark.django_db

SCOPES = [ApiScope.PUBLIC, ApiScope.SERVER, ApiScope.ADMIN]
# The admin site and the console: staff logins only, whatever key comes (their many generated routes are checked
# through the pages below rather than one by one).
STAFF_NAMESPACES = {"admin", "console"}
STAFF_PAGES = ["/admin/", "/admin/personalization/apikey/", "/admin/console/dashboard/", "/admin/console/preview/"]
METHODS = ("get", "post", "put", "patch", "delete")
SECRET = "shopper-token-test-secret"


def _patterns(resolver: URLResolver, prefix: str = "", namespace: str = "") -> Iterator[tuple[str, str, Any]]:
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _patterns(entry, route, entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            yield route, namespace, entry.callback


def _declared(callback: Any) -> str | None:
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return getattr(view_class, "required_scope", None) or getattr(callback, "required_scope", None)


def _methods(callback: Any) -> list[str]:
    view_class = getattr(callback, "cls", None)
    if view_class is None:
        return ["get"]  # a plain Django view
    return [method for method in METHODS if hasattr(view_class, method)]


def _url(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", "sku-1", route).lstrip("^").rstrip("$")


API_ENDPOINTS = [
    (_url(route), method, _declared(callback))
    for route, namespace, callback in _patterns(get_resolver())
    if namespace not in STAFF_NAMESPACES
    for method in _methods(callback)
]


def test_every_endpoint_declares_who_may_call_it():
    undeclared = [
        route
        for route, namespace, callback in _patterns(get_resolver())
        if namespace not in STAFF_NAMESPACES and _declared(callback) not in {*ApiScope.values, OPEN, STAFF_SESSION}
    ]
    staff_only = [route for route, namespace, _ in _patterns(get_resolver()) if namespace in STAFF_NAMESPACES]

    assert undeclared == []
    assert staff_only and all(route.startswith("admin/") for route in staff_only)


@pytest.fixture
def keys() -> dict[str, str]:
    return {scope: api_key_create(name=f"{scope} key", scope=scope).raw_key for scope in SCOPES}


def _client(raw_key: str, **headers: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}", **headers)
    return client


def _call(client: APIClient, method: str, url: str, body: Any = None) -> Any:
    call: Callable[..., Any] = getattr(client, method)
    if method in {"post", "put", "patch"}:
        return call(url, body if body is not None else {}, format="json")
    return call(url, {"user_id": "u1"} if url.endswith("recommendations") else None)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize(("url", "method", "required"), API_ENDPOINTS, ids=[f"{m} {u}" for u, m, _ in API_ENDPOINTS])
def test_a_key_is_let_in_exactly_where_its_scope_reaches(keys, scope, url, method, required):
    response = _call(_client(keys[scope]), method, url)

    if required == OPEN:
        assert response.status_code == 200
    elif required == STAFF_SESSION:
        assert response.status_code == 302 and "/login/" in response["Location"]
    elif SCOPE_RANKS[ApiScope(scope)] >= SCOPE_RANKS[ApiScope(required)]:
        assert response.status_code not in {401, 403, 429}, response.content
    else:
        assert response.status_code == 403
        body = response.json()
        assert body["code"] == "insufficient_scope" and body["errors"] == {}
        assert f"'{scope}'" in body["detail"] and f"'{required}'" in body["detail"]


@pytest.mark.parametrize("page", STAFF_PAGES)
def test_no_key_opens_the_admin_or_the_console(keys, page):
    response = _client(keys[ApiScope.ADMIN]).get(page)

    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_scopes_nest():
    ranks = [SCOPE_RANKS[scope] for scope in SCOPES]
    assert ranks == sorted(ranks) and len(set(ranks)) == 3


# Shopper tokens: a public key bound to shoppers.


@pytest.fixture
def bound_key(settings) -> str:
    settings.SHOPPER_TOKEN_SECRET = SECRET
    return api_key_create(name="page", scope=ApiScope.PUBLIC, requires_shopper_token=True).raw_key


def test_a_bound_key_gets_the_shelf_of_the_shopper_its_token_signs_and_no_other(bound_key):
    ItemFactory(external_id="p1")
    token = shopper_token_sign("u1")

    own = _client(bound_key, HTTP_X_SHOPPER_TOKEN=token).get("/api/v1/recommendations", {"user_id": "u1"})
    other = _client(bound_key, HTTP_X_SHOPPER_TOKEN=token).get("/api/v1/recommendations", {"user_id": "u2"})
    missing = _client(bound_key).get("/api/v1/recommendations", {"user_id": "u1"})
    anonymous = _client(bound_key, HTTP_X_SHOPPER_TOKEN=shopper_token_sign("session:s1")).get(
        "/api/v1/recommendations", {"session_id": "s1"}
    )

    assert (own.status_code, anonymous.status_code) == (200, 200)
    assert (other.status_code, missing.status_code) == (403, 403)
    assert other.json()["code"] == "shopper_token_mismatch"


def test_a_bound_keys_events_must_all_be_its_shoppers(bound_key):
    client = _client(bound_key, HTTP_X_SHOPPER_TOKEN=shopper_token_sign("u1"))
    event = {"type": "view", "item_id": "p1"}

    own = client.post("/api/v1/events", {**event, "event_id": "e1", "user_id": "u1"}, format="json")
    mixed = client.post(
        "/api/v1/events",
        {"events": [{**event, "event_id": "e2", "user_id": "u1"}, {**event, "event_id": "e3", "user_id": "u2"}]},
        format="json",
    )

    assert own.status_code == 202 and own.json()["accepted"] == 1
    assert mixed.status_code == 403 and mixed.json()["code"] == "shopper_token_mismatch"


def test_a_bound_key_identifies_only_its_shopper(bound_key):
    client = _client(bound_key, HTTP_X_SHOPPER_TOKEN=shopper_token_sign("u1"))

    assert client.post("/api/v1/users/u1/identify", {"session_id": "s1"}, format="json").status_code == 200
    assert client.post("/api/v1/users/u2/identify", {"session_id": "s1"}, format="json").status_code == 403


def test_a_bound_key_may_ask_for_similar_items_which_concern_no_shopper(bound_key):
    ItemFactory(external_id="p1")

    assert _client(bound_key).get("/api/v1/items/p1/similar").status_code == 200


def test_endpoints_that_cannot_check_a_shopper_token_refuse_a_bound_key(bound_key):
    response = _client(bound_key).post("/api/v1/segment/v1/track", {"messageId": "m1"}, format="json")

    assert response.status_code == 403 and response.json()["code"] == "shopper_token_required"


def test_only_a_public_key_can_be_bound_and_only_with_a_secret(settings):
    from personalization.errors import ApplicationError

    settings.SHOPPER_TOKEN_SECRET = ""
    with pytest.raises(ApplicationError, match="SHOPPER_TOKEN_SECRET"):
        api_key_create(name="page", scope=ApiScope.PUBLIC, requires_shopper_token=True)
    settings.SHOPPER_TOKEN_SECRET = SECRET
    with pytest.raises(ApplicationError) as refused:
        api_key_create(name="back end", scope=ApiScope.SERVER, requires_shopper_token=True)
    assert "requires_shopper_token" in refused.value.errors


# The WebSocket: public, like GET /recommendations.


async def _socket_close_code(path: str) -> int | None:
    """The code a refused socket is closed with (after the handshake, with its reason), None when it is served."""
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_output(timeout=10)
    await communicator.disconnect()
    return int(first["code"]) if first["type"] == "websocket.close" else None


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_websocket_takes_a_public_key_and_checks_a_bound_keys_token(settings):
    settings.SHOPPER_TOKEN_SECRET = SECRET
    await sync_to_async(ItemFactory)(external_id="p1")
    public = (await sync_to_async(api_key_create)(name="ws", scope=ApiScope.PUBLIC)).raw_key
    bound = (
        await sync_to_async(api_key_create)(name="ws bound", scope=ApiScope.PUBLIC, requires_shopper_token=True)
    ).raw_key
    token = shopper_token_sign("u1")

    assert await _socket_close_code(f"/ws/v1/recommendations/?api_key={public}&user_id=u1") is None
    assert await _socket_close_code(f"/ws/v1/recommendations/?api_key={bound}&user_id=u1") == 4403
    assert await _socket_close_code(f"/ws/v1/recommendations/?api_key={bound}&user_id=u2&shopper_token={token}") == 4403
    assert await _socket_close_code(f"/ws/v1/recommendations/?api_key={bound}&user_id=u1&shopper_token={token}") is None


# A session's state is keyed "session:<id>": a user id of that form would share it (issue 18).
SESSION_LIKE_USER = "session:s-1"


def test_a_user_id_in_the_session_namespace_is_refused_everywhere_naming_the_field(api_client, clean_redis):
    event = {"event_id": "e1", "type": "view", "user_id": SESSION_LIKE_USER, "item_id": "sku-1"}
    calls = {
        "events": api_client.post("/api/v1/events", event, format="json"),
        "recommendations": api_client.get(f"/api/v1/recommendations?user_id={SESSION_LIKE_USER}"),
        "traits": api_client.put(f"/api/v1/users/{SESSION_LIKE_USER}", {"traits": {"age": 30}}, format="json"),
        "identify": api_client.post(
            f"/api/v1/users/{SESSION_LIKE_USER}/identify", {"session_id": "s-2"}, format="json"
        ),
        "segment": api_client.post(
            "/api/v1/segment/v1/track",
            {
                "type": "track",
                "event": "Product Viewed",
                "messageId": "m1",
                "userId": SESSION_LIKE_USER,
                "properties": {"product_id": "sku-1"},
            },
            format="json",
        ),
    }

    assert calls["events"].status_code == 202
    assert calls["events"].json()["errors"] == [
        {"index": 0, "field": "user_id", "message": 'Must not start with "session:": that names an anonymous session '
         "(send its id as session_id)."}
    ]  # fmt: skip
    for name in ("recommendations", "traits", "identify"):
        assert calls[name].status_code == 400, name
        assert list(calls[name].json()["errors"]) == ["user_id"], name
    assert calls["segment"].json()["rejected"] == 1
    assert calls["segment"].json()["errors"][0]["field"] == "userId"
    assert clean_redis.keys("user:*") == []  # the session s-1 got nothing from any of them


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_socket_for_a_user_id_in_the_session_namespace_is_closed_with_4400():
    key = (await sync_to_async(api_key_create)(name="ws", scope="public")).raw_key
    communicator = WebsocketCommunicator(
        application, f"/ws/v1/recommendations/?api_key={key}&user_id={SESSION_LIKE_USER}"
    )

    assert (await communicator.connect())[0] is True
    closed = await communicator.receive_output(timeout=10)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4400)
