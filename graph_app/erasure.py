"""Erasure of a shopper everywhere (`DELETE /api/v1/users/{user_id}`, the console's "Erase" action).

Each owner erases its own: the Signal layer the log, impressions, identity links, stream entries and the online
state it writes (`signals_app.erasure`, which also sets the tombstone the consumer honours); Surface the caps and
slates (`surface_app.erasure`); the caches their own (`personalization.cache`); this layer the shopper's row
(traits, user vector), its training rows, its traits in Redis and its user nearest list. The online state goes
first, atomically per partition, so the next recommendation is the non-personal one; a later event starts a new
history (and a new shopper).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db import transaction

from graph_app.item_model import item_model_lists_forget
from graph_app.models import FeatureRow, Shopper
from personalization import redis_keys
from personalization.cache import user_caches_erase
from signals_app.erasure import (
    linked_sessions_forget,
    shopper_log_erase,
    shopper_online_erase,
    shopper_online_keys,
    shopper_trace,
)
from surface_app.erasure import shopper_surface_keys, slates_forget
from surface_app.services import shelves_notify

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


def erased_shopper_repr(shopper_id: int) -> str:
    """How the console's history names an erased shopper: by its row number, never its id."""
    return f"user #{shopper_id} (erased)"


def _console_history_redact(*, shopper_ids: list[int]) -> None:
    """The console's history of the shopper's row (changes made in the admin) stops naming it."""
    content_type = ContentType.objects.get_for_model(Shopper)
    for shopper_id in shopper_ids:
        LogEntry.objects.filter(content_type=content_type, object_id=str(shopper_id)).update(
            object_repr=erased_shopper_repr(shopper_id)
        )


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
    with transaction.atomic():
        feature_rows, _ = FeatureRow.objects.filter(user_key__in=user_keys).delete()
        shopper_ids = list(Shopper.objects.filter(external_id=user_id).values_list("pk", flat=True))
        shoppers, _ = Shopper.objects.filter(pk__in=shopper_ids).delete()
        _console_history_redact(shopper_ids=shopper_ids)
    caches = sum(user_caches_erase(user_key=user_key) for user_key in user_keys)
    caches += item_model_lists_forget(user_keys=user_keys)
    slates = slates_forget(request_ids=trace.request_ids, user_keys=set(user_keys))
    linked_sessions_forget(user_id=user_id)
    shelves_notify(user_keys=set(user_keys))  # open shelves are served again: non-personal now
    erasure = ShopperErasure(
        user_id=user_id,
        shoppers=shoppers,
        sessions=len(trace.session_ids),
        events=log.events,
        impressions=log.impressions,
        bandit_decisions=log.bandit_decisions,
        identity_links=log.identity_links,
        dead_letters=log.dead_letters,
        feature_rows=feature_rows,
        stream_entries=online.stream_entries,
        redis_keys=online.redis_keys + caches,
        cached_slates=slates,
    )
    # The counts only: the log keeps no trace of whom.
    logger.info("graph.shopper_erased", extra={k: v for k, v in erasure.as_dict().items() if k != "user_id"})
    return erasure
