"""Erasure of a shopper everywhere (`DELETE /api/v1/users/{user_id}`, the console's "Erase" action).

Each owner erases its own: the Signal layer the log, impressions, identity links, stream entries and the online
state it writes (`signals_app.erasure`, which also sets the tombstone the consumer honours); Surface the caps and
slates (`surface_app.erasure`); Graph the shopper's row (traits, user vector), its training rows, its traits in
Redis, its cached lists and the user's caches (`graph_app.erasure`). Here, above the layers, because it drives all
three. The online state goes first, atomically per partition, so the next recommendation is the non-personal one;
a later event starts a new history (and a new shopper).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from graph_app.interface import shopper_rows_erase
from personalization import redis_keys
from personalization.live_updates import users_changed
from signals_app.interface import (
    linked_sessions_forget,
    shopper_log_erase,
    shopper_online_erase,
    shopper_online_keys,
    shopper_trace,
)
from surface_app.interface import shopper_surface_keys, slates_forget

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShopperErasure:
    """What was erased, by kind (each a count)."""

    user_id: str
    shoppers: int
    sessions: int
    events: int
    impressions: int
    bandit_decisions: int
    identity_links: int
    dead_letters: int
    feature_rows: int
    stream_entries: int
    redis_keys: int
    cached_slates: int

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def shopper_erase(*, user_id: str) -> ShopperErasure:
    trace = shopper_trace(user_id=user_id)
    user_keys = sorted(trace.user_keys)
    keys = {
        user_key: [
            *shopper_online_keys(trace, user_key),
            *shopper_surface_keys(user_key=user_key, placements=trace.placements),
            redis_keys.user_traits(user_key),
        ]
        for user_key in user_keys
    }
    online = shopper_online_erase(trace=trace, keys=keys)
    log = shopper_log_erase(trace=trace)
    rows = shopper_rows_erase(user_id=user_id, user_keys=user_keys)
    slates = slates_forget(request_ids=trace.request_ids, user_keys=set(user_keys))
    linked_sessions_forget(user_id=user_id)
    users_changed(user_keys=user_keys)  # open shelves are served again: non-personal now
    erasure = ShopperErasure(
        user_id=user_id,
        shoppers=rows.shoppers,
        sessions=len(trace.session_ids),
        events=log.events,
        impressions=log.impressions,
        bandit_decisions=log.bandit_decisions,
        identity_links=log.identity_links,
        dead_letters=log.dead_letters,
        feature_rows=rows.feature_rows,
        stream_entries=online.stream_entries,
        redis_keys=online.redis_keys + rows.redis_keys,
        cached_slates=slates,
    )
    # The counts only: the log keeps no trace of whom.
    logger.info("graph.shopper_erased", extra={k: v for k, v in erasure.as_dict().items() if k != "user_id"})
    return erasure
