"""API keys: creation, revocation and verification."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from personalization.errors import ApplicationError
from personalization.models import ApiKey

KEY_PREFIX_LENGTH = 8
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiClient:
    api_key_id: int
    name: str


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str


_verified_keys: dict[str, tuple[float, ApiClient]] = {}


def _hash(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, name: str) -> CreatedApiKey:
    name = name.strip()
    if not name:
        raise ApplicationError("An API key needs a name.", code="invalid", errors={"name": ["This field is required."]})
    prefix = secrets.token_hex(KEY_PREFIX_LENGTH // 2)
    raw_key = f"pk_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey.objects.create(name=name, prefix=prefix, hashed_key=_hash(raw_key))
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


@transaction.atomic
def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    _verified_keys.clear()
    return api_key


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
        row = ApiKey.objects.filter(hashed_key=hashed, revoked_at__isnull=True).values("id", "name").first()
    except (OperationalError, InterfaceError):
        if cached:
            logger.warning("auth.key_verified_from_cache", extra={"api_key_id": cached[1].api_key_id})
            return cached[1]
        raise
    if row is None:
        _verified_keys.pop(hashed, None)
        return None
    client = ApiClient(api_key_id=row["id"], name=row["name"])
    _verified_keys[hashed] = (now, client)
    return client
