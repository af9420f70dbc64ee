"""Who may call what: the scope each endpoint requires, shopper tokens, and the client's address.

Every endpoint declares its `required_scope` (one of `ApiScope`, or OPEN / STAFF_SESSION for the few that take no
API key): a DRF view as a class attribute, read by `personalization.authentication.ScopedAccess`; a plain Django
view through `endpoint_access`. A view without one requires `server`. `tests/personalization/test_access.py`
walks config/urls.py and fails on any endpoint that declares none.

A shopper token binds a public key's call to one shopper: the hex HMAC-SHA256 of the shopper's id with
SHOPPER_TOKEN_SECRET, made by the storefront's back end for its signed-in shopper. The shopper's id is the
platform's user key: the user id, or `session:<session id>` for an anonymous session.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar

from django.conf import settings

from personalization.models import ApiScope

OPEN: Final = "open"  # no key: liveness and readiness probes, the API's schema and docs
STAFF_SESSION: Final = "staff-session"  # console pages: a staff login; API keys open nothing there
DEFAULT_SCOPE: Final = ApiScope.SERVER
SHOPPER_TOKEN_HEADER: Final = "X-Shopper-Token"
SHOPPER_TOKEN_QUERY: Final = "shopper_token"  # the WebSocket's, as browsers cannot set its headers

View = TypeVar("View", bound=Callable[..., Any])


def endpoint_access(required_scope: str) -> Callable[[View], View]:
    """Declares a plain Django view's access (its `required_scope`), as DRF views declare it as an attribute."""

    def declare(view: View) -> View:
        view.required_scope = required_scope  # type: ignore[attr-defined]
        return view

    return declare


SESSION_KEY_PREFIX: Final = "session:"
USER_ID_IN_SESSION_NAMESPACE: Final = (
    'Must not start with "session:": that names an anonymous session (send its id as session_id).'
)


def user_key_of(*, user_id: str, session_id: str = "") -> str:
    """The shopper a call is about, as the platform keys its state (and as shopper tokens sign it)."""
    return user_id or f"{SESSION_KEY_PREFIX}{session_id}"


def user_id_in_session_namespace(user_id: str) -> bool:
    """A session's state is keyed `session:<id>` and a user's by the bare user id, so a user id of that form would
    share a session's state: none is taken (400 naming the field)."""
    return user_id.startswith(SESSION_KEY_PREFIX)


def shopper_token_sign(user_key: str) -> str:
    """What the storefront's back end computes for its shopper (and tests)."""
    secret = settings.SHOPPER_TOKEN_SECRET.encode()
    return hmac.new(secret, user_key.encode(), hashlib.sha256).hexdigest()


def shopper_token_valid(token: str, *, user_keys: Iterable[str]) -> bool:
    """Whether `token` signs every one of `user_keys` (a call about several shoppers cannot be bound to one)."""
    if not settings.SHOPPER_TOKEN_SECRET or not token:
        return False
    keys = set(user_keys)
    if len(keys) != 1:
        return False
    return hmac.compare_digest(shopper_token_sign(keys.pop()), token.strip().lower())


def client_address(meta: Mapping[str, Any]) -> str:
    """The address wrong keys are counted against: REMOTE_ADDR, or with API_TRUSTED_PROXY_COUNT proxies in front the
    address the outermost of them saw (X-Forwarded-For's entries before theirs are the client's to forge)."""
    proxies = settings.API_TRUSTED_PROXY_COUNT
    if proxies:
        hops = [hop.strip() for hop in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return str(meta.get("REMOTE_ADDR") or "unknown")
