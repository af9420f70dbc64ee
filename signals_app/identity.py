"""Identity: an anonymous session joins a user's history when the storefront identifies it.

The link is kept in Redis (where the ingest path resolves later session-only events), the session's online
state is merged into the user's, and the link is appended to the event stream so the durable log records it
(`IdentityLink`, which the rebuild of the online state reads: `identity_links_read`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from graph_app.state.interface import session_state_merge
from personalization import redis_keys
from personalization.redis_client import get_redis
from signals_app.models import IdentityLink

logger = logging.getLogger(__name__)

SESSION_ALIAS_TTL_SECONDS = 90 * 24 * 3600
IDENTITY_LINKS_FETCH_ROWS = 10_000


@dataclass(frozen=True)
class IdentityLinkResult:
    user_id: str
    session_id: str
    merged_items: int
    merged_entities: int


def identity_link(*, user_id: str, session_id: str) -> IdentityLinkResult:
    get_redis().set(redis_keys.session_alias(session_id), user_id, ex=SESSION_ALIAS_TTL_SECONDS)
    return _merge_and_log(user_id=user_id, session_id=session_id)


def identity_link_if_new(*, user_id: str, session_id: str) -> IdentityLinkResult | None:
    """Link on the first event that carries both ids; later ones find the link already there."""
    if not get_redis().set(redis_keys.session_alias(session_id), user_id, ex=SESSION_ALIAS_TTL_SECONDS, nx=True):
        return None
    return _merge_and_log(user_id=user_id, session_id=session_id)


def _merge_and_log(*, user_id: str, session_id: str) -> IdentityLinkResult:
    merged = session_state_merge(user_id=user_id, session_id=session_id, linked_at=datetime.now(UTC))
    logger.info("signals.identity_linked", extra={"user_id": user_id, "session_id": session_id})
    return IdentityLinkResult(user_id, session_id, merged.items, merged.entities)


def identity_links_read() -> Iterator[tuple[str, str]]:
    """(session id, user id) of every identified session, fetched in chunks from a server-side cursor: a shop may
    have millions."""
    links = IdentityLink.objects.order_by().values_list("session_id", "user_id")
    return links.iterator(chunk_size=IDENTITY_LINKS_FETCH_ROWS)
