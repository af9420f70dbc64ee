"""WebSocket `/ws/v1/recommendations/?placement=P&user_id=U[&k=10][&api_key=KEY]`.

Browsers cannot set headers on a WebSocket, so the key comes as `api_key` in the query string (or as an
`Authorization: Bearer` header from server-side clients); a staff member's console session also works when the
page comes from a trusted origin (DJANGO_CSRF_TRUSTED_ORIGINS).
Close codes: 4401 not authenticated, 4400 bad query.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from personalization.services import api_key_verify
from surface_app.services import shelf_group_name
from surface_app.serving.slates import slate_serve

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400
K_MAX = 100


class RecommendationsConsumer(AsyncJsonWebsocketConsumer):
    user_key: str
    placement: str
    k: int
    group_name: str

    async def connect(self) -> None:
        query = {name: values[-1] for name, values in parse_qs(self.scope["query_string"].decode()).items()}
        if not await self._is_authenticated(query):
            await self.close(code=CLOSE_NOT_AUTHENTICATED)
            return
        user_id, session_id = query.get("user_id", ""), query.get("session_id", "")
        try:
            self.k = int(query.get("k", "10"))
        except ValueError:
            self.k = -1
        if not (user_id or session_id) or not 1 <= self.k <= K_MAX or len(user_id) > 200 or "\x00" in user_id:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.user_key = user_id or f"session:{session_id}"
        self.placement = query.get("placement", "default")[:100]
        self.group_name = shelf_group_name(self.user_key)
        await self.channel_layer.group_add(self.group_name, self.channel_name)
        await self.accept()
        await self._send_slate()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group_name"):
            await self.channel_layer.group_discard(self.group_name, self.channel_name)

    async def shelf_refresh(self, message: dict[str, Any]) -> None:
        await self._send_slate()

    async def _send_slate(self) -> None:
        slate = await database_sync_to_async(slate_serve)(user_key=self.user_key, placement=self.placement, k=self.k)
        await self.send_json({"type": "recommendations", **slate.as_dict()})

    async def _is_authenticated(self, query: dict[str, str]) -> bool:
        raw_key = query.get("api_key", "")
        if not raw_key:
            headers = dict(self.scope.get("headers", []))
            scheme, _, raw_key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            raw_key = raw_key.strip() if scheme.lower() == "bearer" else ""
        if raw_key:
            return await database_sync_to_async(api_key_verify)(raw_key=raw_key) is not None
        user = self.scope.get("user")
        is_staff = bool(user is not None and user.is_authenticated and user.is_staff)
        # A cookie-authenticated socket must come from the console's own pages (no cross-site hijacking).
        return is_staff and self._origin_is_trusted()

    def _origin_is_trusted(self) -> bool:
        origin = dict(self.scope.get("headers", [])).get(b"origin", b"").decode("latin-1")
        return origin in settings.CSRF_TRUSTED_ORIGINS
