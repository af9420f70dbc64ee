"""WebSocket `/ws/v1/recommendations/?placement=P&user_id=U[&item_id=I[,J...]][&k=N][&api_key=KEY]`.

Browsers cannot set headers on a WebSocket, so the key comes as `api_key` in the query string (or as an
`Authorization: Bearer` header from server-side clients); a staff member's console session also works when the
page comes from a trusted origin (DJANGO_CSRF_TRUSTED_ORIGINS).
`item_id` names context items (a product page's item, a cart's), as for `GET /api/v1/recommendations`; `k`
defaults to the placement's size. Close codes: 4401 not authenticated, 4400 bad query, 4403 a key outside its scope
(public is enough) or, for a key bound to shoppers, without `shopper_token` (or an `X-Shopper-Token` header) signing
the user, 4429 over the key's request rate (each connection counts as a request) or too many wrong keys. Revoking a key
closes its open sockets with 4401.

A socket sends a `recommendations` message on connect, after each of the user's events (always), and after a
catalog, stock, rule or placement change (`surface_app.services`) when the slate it serves then differs, in items
or order, from the one it last sent. Re-serves are coalesced per socket (at most one running and one waiting)
and a process assembles one at a time, the user's own events and new connections before catalog and rule
changes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from redis.exceptions import RedisError

from personalization.access import (
    SHOPPER_TOKEN_QUERY,
    client_address,
    shopper_token_valid,
    user_id_in_session_namespace,
    user_key_of,
)
from personalization.cache import user_cache_invalidate
from personalization.models import ApiScope
from personalization.rate_limits import RateLimitExceeded
from personalization.services import (
    ApiClient,
    ApiKeyRefused,
    api_key_authenticate,
    api_key_group_name,
    api_keys_revoked,
)
from surface_app.services import SHELVES_ALL_GROUP, shelf_group_name, shelves_placement_group_name
from surface_app.serving.rules import EMPTY, REBUILD_MIN_INTERVAL_SECONDS, snapshot_current, snapshot_observe
from surface_app.serving.slates import (
    PreviewOptions,
    Slate,
    context_items_parse,
    slate_commit,
    slate_preview,
    slate_serve,
)

logger = logging.getLogger(__name__)

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_RATE_LIMITED = 4429
K_MAX = 100
ID_MAX_LENGTH = 200
# Why a socket is refused, sent with the close code after the handshake: a refusal before it reaches a browser as a
# bare HTTP 403. At most 123 bytes each (the WebSocket limit of a close reason).
CLOSE_REASONS = {
    CLOSE_NOT_AUTHENTICATED: (
        "No valid API key: send api_key=KEY or Authorization: Bearer KEY (or open it from the console)."
    ),
    CLOSE_BAD_REQUEST: (
        f"Bad query: user_id or session_id is required, k from 1 to {K_MAX}, ids up to {ID_MAX_LENGTH} chars."
    ),
    CLOSE_FORBIDDEN: "Forbidden: the key's scope, or the shopper token for this user, does not allow this socket.",
    CLOSE_RATE_LIMITED: "Too many requests for this key or address: retry later.",
}
# The user-keyed caches of `scoring_app.engine.retrieval` that hold candidates.
RETRIEVAL_USER_CACHES = ("candidates", "similar_to_recent")
# A process rebuilds its rules snapshot at most every REBUILD_MIN_INTERVAL_SECONDS: a re-serve for a rule change
# waits that long at most for it.
RULES_SNAPSHOT_WAIT_SECONDS = REBUILD_MIN_INTERVAL_SECONDS + 1.0
RULES_SNAPSHOT_POLL_SECONDS = 0.005

# A revoked key's sockets are closed by a broadcast at once; this re-check closes them should the broadcast be lost
# (Redis pub/sub keeps nothing for a process that was reconnecting) or the key be revoked by other means.
KEY_RECHECK_SECONDS = 5.0

PRIORITY_USER = 0  # a new connection or the user's own events
PRIORITY_CHANGE = 1  # an item on the shelf, or the placement's rules, changed: the slate likely changes
PRIORITY_APPEARED = 2  # a new or restocked item somewhere in the catalog: the slate may change


class _ServingGate:
    """A process assembles one slate at a time: serving is CPU-bound Python, and slates assembled side by side on
    threads neither came faster (the GIL) nor kept their retrieval deadlines (benchmarks/live_updates.py: with six
    at once most pushed slates fell back to popular items). Whoever waits with the lowest priority goes next, first
    come first served within a priority."""

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def turn(self, waiter: _Waiter) -> AsyncIterator[None]:
        if self._busy or self._waiters:
            waiter.order = next(self._order)
            waiter.future = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter.future  # the turn is handed over by _release
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.future.done() and not waiter.future.cancelled():
                    self._release()  # it was handed the turn just as it was cancelled: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        self._busy = False
        if self._waiters:
            chosen = min(self._waiters, key=lambda waiter: (waiter.priority, waiter.order))
            self._waiters.remove(chosen)
            self._busy = True
            assert chosen.future is not None
            chosen.future.set_result(None)


@dataclass(eq=False)
class _Waiter:
    priority: int
    order: int = 0
    future: asyncio.Future[None] | None = None


_gate = _ServingGate()


class _KeyWatch:
    """The keys of this process's open sockets, re-checked every KEY_RECHECK_SECONDS in one query for them all."""

    def __init__(self) -> None:
        self._sockets: dict[int, set[RecommendationsConsumer]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, api_key_id: int, socket: RecommendationsConsumer) -> None:
        self._sockets.setdefault(api_key_id, set()).add(socket)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._watch())

    def discard(self, api_key_id: int, socket: RecommendationsConsumer) -> None:
        sockets = self._sockets.get(api_key_id, set())
        sockets.discard(socket)
        if not sockets:
            self._sockets.pop(api_key_id, None)

    async def _watch(self) -> None:
        while self._sockets:
            await asyncio.sleep(KEY_RECHECK_SECONDS)
            try:
                revoked = await database_sync_to_async(api_keys_revoked)(api_key_ids=set(self._sockets))
            except Exception as error:  # the database is away: keep the sockets, check again later
                logger.warning("surface.key_recheck_failed", extra={"error": repr(error)})
                continue
            for api_key_id in revoked:
                for socket in list(self._sockets.pop(api_key_id, ())):
                    await socket.api_key_revoked({})


_key_watch = _KeyWatch()


@dataclass
class _Refresh:
    """Why a socket's slate is served again, merged while it waits."""

    always_send: bool = False  # the user's own events
    send_if_changed: bool = False  # an item on the shelf, or the placement's rules, changed
    appeared: set[str] = field(default_factory=set)  # new or restocked items that may now enter the shelf
    likely: bool = False  # one of them was on the shelf before
    rules_version: bytes | None = None  # the configuration version the placement's change made

    @property
    def priority(self) -> int:
        if self.always_send:
            return PRIORITY_USER
        return PRIORITY_CHANGE if self.send_if_changed or self.likely else PRIORITY_APPEARED

    def should_send(self, *, sent: tuple[str, ...], served: tuple[str, ...]) -> bool:
        if self.always_send:
            return True
        if served == sent:
            return False
        # A slate that only differs by the bandit's exploration is no reason to push: a new item must be on it.
        return self.send_if_changed or not self.appeared.isdisjoint(served)


# One wait per configuration version and event loop, shared by every socket of the process.
_rules_waits: dict[bytes, asyncio.Task[None]] = {}


async def _rules_snapshot_caught_up(version: bytes) -> None:
    """Serving rebuilds a changed rules snapshot in the background and serves the old one meanwhile: a re-serve
    caused by the change waits (without holding a serving slot) until this process's snapshot has it."""
    loop = asyncio.get_running_loop()
    waiting = _rules_waits.get(version)
    if waiting is None or waiting.get_loop() is not loop:
        waiting = _rules_waits[version] = loop.create_task(_rules_snapshot_wait(version))
    await asyncio.shield(waiting)  # a socket that closes must not cancel the others' wait


async def _rules_snapshot_wait(version: bytes) -> None:
    try:
        deadline = time.monotonic() + RULES_SNAPSHOT_WAIT_SECONDS
        # Never built (it would be built inline, with database queries, not on the event loop): serving builds it.
        while (current := snapshot_current()) is not EMPTY and time.monotonic() < deadline:
            if _version_reached(current.version, version) or _version_reached(
                snapshot_observe(version).version, version
            ):
                return
            await asyncio.sleep(RULES_SNAPSHOT_POLL_SECONDS)
    finally:
        _rules_waits.pop(version, None)


def _version_reached(have: bytes, wanted: bytes) -> bool:
    # Versions count up (INCR); a snapshot already past the wanted one must not be rebuilt back to its label.
    if have.isdigit() and wanted.isdigit():
        return int(have) >= int(wanted)
    return have == wanted


def _key_refusal(
    raw_key: str, meta: dict[str, str], required_scope: str, user_key: str, shopper_token: str
) -> int | ApiClient:
    """The checks of an API request, for a socket's key (a connection counts against its rate): the close code, or
    the key's client."""
    try:
        client = api_key_authenticate(raw_key=raw_key, client_address=client_address(meta))
    except ApiKeyRefused as refused:
        return CLOSE_RATE_LIMITED if refused.too_many is not None else CLOSE_NOT_AUTHENTICATED
    if not client.covers(required_scope):
        return CLOSE_FORBIDDEN
    if client.requires_shopper_token and not shopper_token_valid(shopper_token, user_keys={user_key}):
        return CLOSE_FORBIDDEN
    try:
        client.rate_limit_take()
    except RateLimitExceeded:
        return CLOSE_RATE_LIMITED
    return client


class RecommendationsConsumer(AsyncJsonWebsocketConsumer):
    required_scope = ApiScope.PUBLIC  # shelves and their pushes, as GET /recommendations
    user_key: str
    placement: str
    context_items: list[str]
    k: int | None
    groups: list[str]
    api_key_id: int | None = None  # None: a staff session
    # The item ids of the slate last sent, in order.
    sent_item_ids: tuple[str, ...] = ()
    # Those of the slate before: an item that left the shelf and comes back (restocked) likely returns to it.
    previous_item_ids: frozenset[str] = frozenset()

    async def connect(self) -> None:
        self.groups = []
        self._pending: _Refresh | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._waiter: _Waiter | None = None
        query = {name: values[-1] for name, values in parse_qs(self.scope["query_string"].decode()).items()}
        refusal = await self._refusal(query)
        if isinstance(refusal, int):
            await self._refuse(refusal)
            return
        if refusal is not None:
            # Revoking the key closes the socket (personalization.services.api_key_sockets_close, and _key_watch).
            self.api_key_id = refusal.api_key_id
            self.groups.append(api_key_group_name(refusal.api_key_id))
        user_id, session_id = query.get("user_id", ""), query.get("session_id", "")
        self.context_items = context_items_parse(query.get("item_id", ""))
        try:
            self.k = int(query["k"]) if "k" in query else None
        except ValueError:
            self.k = -1
        identifiers = (user_id, session_id, *self.context_items)
        if (
            not (user_id or session_id)
            or not (self.k is None or 1 <= self.k <= K_MAX)
            or any(len(value) > ID_MAX_LENGTH or "\x00" in value for value in identifiers)
            or user_id_in_session_namespace(user_id)
        ):
            await self._refuse(CLOSE_BAD_REQUEST)
            return
        self.user_key = user_key_of(user_id=user_id, session_id=session_id)
        self.placement = query.get("placement", "default")[:100]
        # Joined before the first slate is served, so no change made while it is served goes unnoticed.
        self.groups += [
            shelf_group_name(self.user_key),
            SHELVES_ALL_GROUP,
            shelves_placement_group_name(self.placement),
        ]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        if self.api_key_id is not None:
            _key_watch.add(self.api_key_id, self)
        async with _gate.turn(_Waiter(PRIORITY_USER)):
            slate = await database_sync_to_async(self._serve)()
        await self._send_slate(slate)

    async def _refuse(self, code: int) -> None:
        """Accept, then close with the code and its reason: the client learns why (CLOSE_REASONS)."""
        await self.accept()
        await self.close(code=code, reason=CLOSE_REASONS[code])

    async def disconnect(self, code: int) -> None:
        if self.api_key_id is not None:
            _key_watch.discard(self.api_key_id, self)
        if self._refresher is not None:
            self._refresher.cancel()
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def api_key_revoked(self, message: dict[str, Any]) -> None:
        """The socket's key was revoked: it closes as a socket opened with an unknown key is refused."""
        await self.close(code=CLOSE_NOT_AUTHENTICATED)

    async def shelf_refresh(self, message: dict[str, Any]) -> None:
        """The user's events: always send the new slate."""
        self._request(_Refresh(always_send=True))

    async def shelf_catalog(self, message: dict[str, Any]) -> None:
        changed, appeared = message.get("changed", []), message.get("appeared", [])
        shown = set(self.sent_item_ids)
        if not (shown.isdisjoint(changed) and shown.isdisjoint(appeared)):
            self._request(_Refresh(send_if_changed=True))
        elif appeared:
            likely = not self.previous_item_ids.isdisjoint(appeared)
            self._request(_Refresh(appeared=set(appeared), likely=likely))

    async def shelf_placement(self, message: dict[str, Any]) -> None:
        self._request(_Refresh(send_if_changed=True, rules_version=message.get("version")))

    def _request(self, refresh: _Refresh) -> None:
        pending = self._pending
        if pending is None:
            pending = self._pending = refresh
        else:
            pending.always_send |= refresh.always_send
            pending.send_if_changed |= refresh.send_if_changed
            pending.appeared |= refresh.appeared
            pending.likely |= refresh.likely
            pending.rules_version = refresh.rules_version or pending.rules_version
        if self._waiter is not None:  # e.g. waiting for a catalog change when the user's event comes: it goes first
            self._waiter.priority = min(self._waiter.priority, pending.priority)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while self._pending is not None:
            if self._pending.rules_version is not None:
                await _rules_snapshot_caught_up(self._pending.rules_version)
            self._waiter = _Waiter(self._pending.priority)
            try:
                async with _gate.turn(self._waiter):
                    # Whatever arrived while waiting is served now too.
                    refresh, self._pending, self._waiter = self._pending, None, None
                    assert refresh is not None
                    # A re-serve that may not be sent is a dry run: impressions and cap counts are recorded only
                    # for what the shopper gets.
                    options = None if refresh.always_send else PreviewOptions()
                    slate = await database_sync_to_async(self._serve)(
                        catalog_grew=bool(refresh.appeared), options=options
                    )
                    served = tuple(item.item_id for item in slate.items)
                    send = refresh.should_send(sent=self.sent_item_ids, served=served)
                    if send and options is not None:
                        slate = await database_sync_to_async(slate_commit)(slate, options)
            except Exception as error:  # the shopper keeps the shelf they have; the next change tries again
                logger.warning("surface.shelf_refresh_failed", extra={"error": repr(error), "user": self.user_key})
                continue
            if send:
                await self._send_slate(slate)

    def _serve(self, *, catalog_grew: bool = False, options: PreviewOptions | None = None) -> Slate:
        if catalog_grew:
            # Score caches a user's candidates for a minute, keyed by their own signals, not by the catalog: a new
            # or restocked item is only a candidate once they are built again.
            try:
                for name in RETRIEVAL_USER_CACHES:
                    user_cache_invalidate(user_key=self.user_key, name=name)
            except RedisError:
                pass  # serving degrades on its own when Redis is down
        if options is not None:
            return slate_preview(
                user_key=self.user_key, placement=self.placement, k=self.k, context_items=self.context_items,
                options=options,
            )  # fmt: skip
        return slate_serve(user_key=self.user_key, placement=self.placement, k=self.k, context_items=self.context_items)

    async def _send_slate(self, slate: Slate) -> None:
        self.previous_item_ids = frozenset(self.sent_item_ids)
        self.sent_item_ids = tuple(item.item_id for item in slate.items)
        await self.send_json({"type": "recommendations", **slate.as_dict()})

    async def _refusal(self, query: dict[str, str]) -> int | ApiClient | None:
        """The close code when the socket may not open, else the key's client (None: a staff session)."""
        headers = dict(self.scope.get("headers", []))
        raw_key = query.get("api_key", "")
        if not raw_key:
            scheme, _, raw_key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            raw_key = raw_key.strip() if scheme.lower() == "bearer" else ""
        if raw_key:
            token = query.get(SHOPPER_TOKEN_QUERY) or headers.get(b"x-shopper-token", b"").decode("latin-1")
            user_key = user_key_of(user_id=query.get("user_id", ""), session_id=query.get("session_id", ""))
            meta = self._client_meta(headers)
            return await database_sync_to_async(_key_refusal)(raw_key, meta, self.required_scope, user_key, token)
        user = self.scope.get("user")
        is_staff = bool(user is not None and user.is_authenticated and user.is_staff)
        # A cookie-authenticated socket must come from the console's own pages (no cross-site hijacking).
        return None if is_staff and self._origin_is_trusted() else CLOSE_NOT_AUTHENTICATED

    def _client_meta(self, headers: dict[bytes, bytes]) -> dict[str, str]:
        client = self.scope.get("client") or ("unknown", 0)
        forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
        return {"REMOTE_ADDR": str(client[0]), "HTTP_X_FORWARDED_FOR": forwarded}

    def _origin_is_trusted(self) -> bool:
        origin = dict(self.scope.get("headers", [])).get(b"origin", b"").decode("latin-1")
        return origin in settings.CSRF_TRUSTED_ORIGINS
