"""API keys: creation, scopes and rate limits, revocation and verification."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, NoReturn

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from personalization.errors import ApplicationError, first_message
from personalization.models import SCOPE_RANKS, ApiKey, ApiScope
from personalization.process_caches import process_cache
from personalization.rate_limits import (
    RateLimitCheck,
    RateLimitExceeded,
    auth_failure_record,
    auth_failures_blocked,
    auth_failures_refusal,
    rate_limit_check,
)

KEY_PREFIX_LENGTH = 8
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiClient:
    api_key_id: int
    name: str
    scope: str = ApiScope.SERVER
    rate_limit_per_second: int | None = None  # None: the scope's default
    requires_shopper_token: bool = False

    def covers(self, required_scope: str) -> bool:
        """Whether this key's scope includes `required_scope` (admin ⊇ server ⊇ public)."""
        return SCOPE_RANKS[ApiScope(self.scope)] >= SCOPE_RANKS[ApiScope(required_scope)]

    def rate_limit(self) -> RateLimitCheck | None:
        return rate_limit_check(
            api_key_id=self.api_key_id, scope=self.scope, rate_limit_per_second=self.rate_limit_per_second
        )

    def rate_limit_take(self) -> None:
        """A token from the key's bucket in a round trip of its own (RateLimitExceeded when empty)."""
        if (check := self.rate_limit()) is not None:
            check.take()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str


class ApiKeyRefused(Exception):
    """A wrong key (401), or the client address's wrong keys used up (`too_many`: 429 with its headers)."""

    def __init__(self, message: str, *, too_many: RateLimitExceeded | None = None) -> None:
        super().__init__(message)
        self.too_many = too_many


_verified_keys: dict[str, tuple[float, ApiClient]] = {}
# Hashes of keys found unknown or revoked -> until when (monotonic); at most this many (oldest dropped first).
_unknown_keys: OrderedDict[str, float] = OrderedDict()
UNKNOWN_KEYS_KEPT: Final = 10_000
_API_KEY_FIELDS = ("id", "name", "scope", "rate_limit_per_second", "requires_shopper_token")


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(
    *,
    name: str,
    scope: str = ApiScope.SERVER,
    rate_limit_per_second: int | None = None,
    requires_shopper_token: bool = False,
) -> CreatedApiKey:
    name = name.strip()
    if not name:
        raise ApplicationError("An API key needs a name.", code="invalid", errors={"name": ["This field is required."]})
    prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
    raw_key = f"pk_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey(
        name=name,
        prefix=prefix,
        hashed_key=_hash(raw_key),
        scope=scope,
        rate_limit_per_second=rate_limit_per_second,
        requires_shopper_token=requires_shopper_token,
    )
    _api_key_validate(api_key)
    api_key.save()
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_update(
    *, api_key: ApiKey, name: str, scope: str, rate_limit_per_second: int | None, requires_shopper_token: bool
) -> ApiKey:
    """What the admin changes. Other processes apply it within API_KEY_CACHE_SECONDS."""
    api_key.name = name.strip()
    api_key.scope = scope
    api_key.rate_limit_per_second = rate_limit_per_second
    api_key.requires_shopper_token = requires_shopper_token
    _api_key_validate(api_key)
    api_key.save(update_fields=["name", "scope", "rate_limit_per_second", "requires_shopper_token"])
    _verified_keys.clear()
    return api_key


def _api_key_validate(api_key: ApiKey) -> None:
    try:
        api_key.full_clean(exclude=["prefix", "hashed_key"])
    except ValidationError as error:
        errors = {field: list(messages) for field, messages in error.message_dict.items()}
        raise ApplicationError(first_message(errors), code="invalid", errors=errors) from error


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke the key; once committed, its open WebSockets are told to close (api_key_sockets_close)."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    _verified_keys.clear()
    api_key_id = api_key.pk
    transaction.on_commit(lambda: api_key_sockets_close(api_key_id=api_key_id))
    return api_key


def api_key_group_name(api_key_id: int) -> str:
    """The channel-layer group of the WebSockets opened with a key (surface_app.consumers joins it)."""
    return f"api-key.{api_key_id}"


def api_keys_revoked(*, api_key_ids: set[int]) -> set[int]:
    """Which of these keys are revoked (or gone): one query, for the WebSockets' periodic re-check."""
    active = set(ApiKey.objects.filter(pk__in=api_key_ids, revoked_at__isnull=True).values_list("pk", flat=True))
    return api_key_ids - active


def api_key_sockets_close(*, api_key_id: int) -> None:
    """Tell every WebSocket process to close the sockets opened with this key (one PUBLISH through the channel
    layer). Its processes forget their cached verification of the key within API_KEY_CACHE_SECONDS anyway."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(api_key_group_name(api_key_id), {"type": "api_key.revoked"})
    except Exception as error:  # the revocation stands: the sockets' periodic re-check closes them
        logger.warning("auth.revocation_broadcast_failed", extra={"api_key_id": api_key_id, "error": repr(error)})


@process_cache("core.api_keys")
def _api_key_caches_clear() -> None:
    """Forget the keys this process verified or found unknown."""
    _verified_keys.clear()
    _unknown_keys.clear()


def api_key_authenticate(*, raw_key: str, client_address: str, count_failure: bool = True) -> ApiClient:
    """The client a presented key belongs to; raises ApiKeyRefused for a wrong key.

    A flood of wrong keys costs no database query: a key found unknown is remembered so for
    API_KEY_NEGATIVE_CACHE_SECONDS, and once an address has presented API_AUTH_FAILURES_MAX wrong keys within
    API_AUTH_FAILURES_WINDOW_SECONDS (counted in Redis, across processes) its next keys are refused (429) before
    they are looked up. `count_failure=False` leaves the counting to a later check of the same request."""
    hashed = _hash(raw_key)
    now = time.monotonic()
    if _unknown_keys.get(hashed, 0.0) > now:
        _refuse(client_address, count_failure)
    cached = _verified_keys.get(hashed)
    if not (cached and now - cached[0] < settings.API_KEY_CACHE_SECONDS):
        blocked = auth_failures_blocked(client_address=client_address)
        if blocked is not None:
            raise ApiKeyRefused("Too many wrong API keys.", too_many=auth_failures_refusal(blocked))
    client = api_key_verify(raw_key=raw_key)
    if client is None:
        _unknown_keys[hashed] = now + settings.API_KEY_NEGATIVE_CACHE_SECONDS
        _unknown_keys.move_to_end(hashed)
        while len(_unknown_keys) > UNKNOWN_KEYS_KEPT:
            _unknown_keys.popitem(last=False)
        _refuse(client_address, count_failure)
    return client


def _refuse(client_address: str, count_failure: bool) -> NoReturn:
    refused = auth_failure_record(client_address=client_address) if count_failure else None
    too_many = auth_failures_refusal(refused) if refused is not None else None
    raise ApiKeyRefused("Unknown or revoked API key.", too_many=too_many)


def api_key_verify(*, raw_key: str) -> ApiClient | None:
    """The client a raw key belongs to, or None when it is unknown or revoked.

    While PostgreSQL is unreachable a key verified before keeps working (ingest must go on without the
    database); a key never seen by this process cannot be verified then, and the error propagates (503)."""
    hashed = _hash(raw_key)
    cached = _verified_keys.get(hashed)
    now = time.monotonic()
    if cached and now - cached[0] < settings.API_KEY_CACHE_SECONDS:
        return cached[1]
    try:
        row = ApiKey.objects.filter(hashed_key=hashed, revoked_at__isnull=True).values(*_API_KEY_FIELDS).first()
    except (OperationalError, InterfaceError):
        if cached:
            logger.warning("auth.key_verified_from_cache", extra={"api_key_id": cached[1].api_key_id})
            return cached[1]
        raise
    if row is None:
        _verified_keys.pop(hashed, None)
        return None
    client = ApiClient(
        api_key_id=row["id"],
        name=row["name"],
        scope=row["scope"],
        rate_limit_per_second=row["rate_limit_per_second"],
        requires_shopper_token=row["requires_shopper_token"],
    )
    _verified_keys[hashed] = (now, client)
    return client
