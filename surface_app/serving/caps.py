"""Frequency caps and cool-downs, counted from logged impressions and enforced atomically in Redis (hot path: plain
Python over dataclasses, no ORM).

A request uses them in two steps:
1. Read, on the request's state round trip: `caps_queue` then `caps_decode` give a `CapState`, and
   `cap_block_reason` (or `caps_block_reasons` for many items) says which candidates the caps refuse now, so that
   the slate is chosen among the others.
2. `caps_enforce_and_record`: one script call re-checks every cap for the chosen items in order and records the
   accepted ones as impressions, atomically, so two concurrent requests of one user never exceed a cap. It is the
   authority; the read is a cheap, possibly slightly stale, forecast of it.

Redis layout, every key in the user's partition slot (`personalization.redis_keys`), so one script reaches all:
- `user_cap_counts` (hash): what was shown -> the times of its recent impressions, oldest first, as a MessagePack
  array (Lua's cmsgpack decodes it in one C call). Fields: "i:<item>", "c:<category>", "e:<entity>",
  "m:<campaign>", the same prefixed with "<placement>\\x1f" for caps that count one placement only, and
  "s:<placement>" for its slates (the times, then an array of their request ids). A field keeps only as many times
  as the largest cap counting it needs, so the script reads a few short values (HMGET of the fields of the call's
  items), never the user's whole history.
- `user_cap_touched` (sorted set): field -> last write; fields untouched for the retention window are deleted.
- `user_cap_blocks` (hash): "<cap signature>\\x1f<field>" -> until when that cap refuses it, written by the
  script whenever a count reaches its cap. The read path fetches only this (small) hash and the cool-downs.
- `user_cooldown` (sorted set): item -> time of the latest hide or skip, written by the ingest script
  (`graph_app.state.ingest`) in the event's own round trip.

A spec counts the impressions of every placement, or only of the placement being served (`per_placement`, for a
cap configured on one placement). Impressions are recorded only for what the call's specs count, so a cap that
counts every placement must be among every placement's specs (as a FrequencyCap without placement is). The
`placement` scope counts the placement's slates (requests), not its items. Windows slide: an impression counts
while `served_at > now - window_seconds`. An item a pin shows (`CapItem.pin_exempt`, see `surface_app.serving.rules`)
is counted by every cap but refused only by campaign and placement caps and the cool-down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from graph_app.state.interface import IMPRESSION_LOG_LUA_FILES, ImpressionLogCall, cooldown_key, cooldown_queue
from personalization import redis_keys
from personalization.redis_client import ShaScript, get_redis

logger = logging.getLogger(__name__)

# Scopes: the values of surface_app.models.FrequencyCap.Scope.
SCOPE_ITEM = "item"
SCOPE_CATEGORY = "category"
SCOPE_ENTITY = "entity"
SCOPE_CAMPAIGN = "campaign"
SCOPE_PLACEMENT = "placement"
SCOPE_COOLDOWN = "cooldown"
SCOPES = frozenset({SCOPE_ITEM, SCOPE_CATEGORY, SCOPE_ENTITY, SCOPE_CAMPAIGN, SCOPE_PLACEMENT, SCOPE_COOLDOWN})
# The caps a pin is exempt from unless it opts in: a campaign cap exists to cap pins, a placement cap caps the shelf.
PIN_EXEMPT_SCOPES = frozenset({SCOPE_ITEM, SCOPE_CATEGORY, SCOPE_ENTITY})
# How a counted field names what was shown, by scope.
_TAGS = {SCOPE_ITEM: "i:", SCOPE_CATEGORY: "c:", SCOPE_ENTITY: "e:", SCOPE_CAMPAIGN: "m:"}
SEPARATOR = "\x1f"
COOLDOWN_REASON = "cooldown"

# The enforce script (`caps_enforce_body.lua`, returning what it refused: `caps_enforce.lua`), and the same that
# also logs the slate's impressions when it refused nothing (the state package's impression log composed before
# it): one call and one round trip fewer a request.
enforce_script = ShaScript.from_files(__file__, "caps_enforce_body.lua", "caps_enforce.lua")
enforce_and_log_script = ShaScript.from_files(
    __file__, *IMPRESSION_LOG_LUA_FILES, "caps_enforce_body.lua", "caps_enforce_and_log.lua"
)
_SPEC = enforce_script.record("SPEC")


@dataclass(frozen=True, slots=True)
class CapSpec:
    """One frequency cap as serving applies it (compiled from a `FrequencyCap` row). A cool-down uses only
    `window_seconds`."""

    scope: str
    max_impressions: int
    window_seconds: int
    name: str
    # Count only the impressions of the placement being served (a cap configured on one placement), not of all.
    per_placement: bool = False


@dataclass(frozen=True, slots=True)
class CapItem:
    """What the caps need to know about a candidate. Entities as keys like "brand:acme"; "" means none."""

    item_id: str
    category: str = ""
    entities: tuple[str, ...] = ()
    campaign: str = ""
    # Shown by a pin that does not opt in to caps: caps of PIN_EXEMPT_SCOPES count it but do not refuse it.
    pin_exempt: bool = False


# A compiled spec: its scope, the values it refuses (None: everything), the reason to give, and whether a
# pin_exempt item passes it.
_Check = tuple[str, frozenset[str] | None, str, bool]


@dataclass
class CapState:
    """What the caps refuse for a user at `now` (see `caps_decode`)."""

    now: float
    # cap signature -> the fields it refuses now ("i:<item>", "c:<category>", ..., "s:<placement>").
    blocks: dict[str, set[str]]
    # item id -> time of the latest hide or skip.
    cooldown: dict[str, float]
    # (id of the specs list, placement) -> (the list, its checks): specs are compiled once per request.
    _compiled: dict[tuple[int, str], tuple[Sequence[CapSpec], list[_Check]]] = field(default_factory=dict, repr=False)


EMPTY_REPLIES: tuple[dict[bytes, bytes], list[Any]] = ({}, [])


def cap_signature(spec: CapSpec, placement: str) -> str:
    """What identifies a cap's counting in Redis: a changed limit or window starts afresh instead of reusing the
    old cap's blocks (the counts themselves are shared)."""
    signature = f"{spec.scope}/{spec.max_impressions}/{spec.window_seconds}"
    return f"{signature}/{placement}" if spec.per_placement and spec.scope != SCOPE_PLACEMENT else signature


def caps_horizon(specs: Sequence[CapSpec]) -> int:
    """The longest window of the specs (0 when there is none): the read horizon for `caps_queue`."""
    return max((spec.window_seconds for spec in specs), default=0)


def caps_queue(pipeline: redis.client.Pipeline, *, user_key: str, now: float, horizon_seconds: int) -> None:
    """Queue the two reads `caps_decode` needs: what the user's caps refuse (a small hash) and the hides and skips
    within `horizon_seconds`. Queue nothing when no spec applies (and use EMPTY_REPLIES, or skip the caps)."""
    pipeline.hgetall(redis_keys.user_cap_blocks(user_key))
    cooldown_queue(pipeline, user_key=user_key, since=now - horizon_seconds)


def caps_decode(replies: Sequence[Any], *, now: float) -> CapState:
    """The two replies of `caps_queue` (or EMPTY_REPLIES) as a CapState."""
    blocked, hidden = replies
    blocks: dict[str, set[str]] = {}
    for name, until in blocked.items():
        if float(until) > now:
            signature, _, what = name.decode().partition(SEPARATOR)
            blocks.setdefault(signature, set()).add(what)
    cooldown = {item.decode(): float(hidden_at) for item, hidden_at in hidden}
    return CapState(now=now, blocks=blocks, cooldown=cooldown)


def _compile(state: CapState, specs: Sequence[CapSpec], placement: str) -> list[_Check]:
    """What each spec refuses now; specs that refuse nothing are left out."""
    checks: list[_Check] = []
    for spec in specs:
        if spec.scope == SCOPE_COOLDOWN:
            since = state.now - spec.window_seconds
            hidden = frozenset(item for item, hidden_at in state.cooldown.items() if hidden_at > since)
            if hidden:
                checks.append((SCOPE_ITEM, hidden, COOLDOWN_REASON, False))
            continue
        blocked = state.blocks.get(cap_signature(spec, placement))
        if not blocked:
            continue
        reason = f"cap:{spec.name}"
        if spec.scope == SCOPE_PLACEMENT:
            if f"s:{placement}" in blocked:
                checks.append((SCOPE_PLACEMENT, None, reason, False))
            continue
        tag = _TAGS.get(spec.scope)
        if tag is None:
            logger.warning("surface.cap_scope_unknown", extra={"cap": spec.name, "scope": spec.scope})
            continue
        values = frozenset(what[2:] for what in blocked if what.startswith(tag))
        if values:
            checks.append((spec.scope, values, reason, spec.scope in PIN_EXEMPT_SCOPES))
    return checks


def _checks(state: CapState, specs: Sequence[CapSpec], placement: str) -> list[_Check]:
    key = (id(specs), placement)
    compiled = state._compiled.get(key)
    if compiled is None or compiled[0] is not specs:
        compiled = (specs, _compile(state, specs, placement))
        state._compiled[key] = compiled  # holds the list, so its id is not reused while the state lives
    return compiled[1]


def _reason(checks: list[_Check], item: CapItem) -> str | None:
    for scope, blocked, reason, pins_pass in checks:
        if pins_pass and item.pin_exempt:
            continue
        if blocked is None:
            return reason
        if scope == SCOPE_ITEM:
            if item.item_id in blocked:
                return reason
        elif scope == SCOPE_CATEGORY:
            if item.category in blocked:
                return reason
        elif scope == SCOPE_CAMPAIGN:
            if item.campaign in blocked:
                return reason
        elif not blocked.isdisjoint(item.entities):
            return reason
    return None


def cap_block_reason(state: CapState, specs: Sequence[CapSpec], item: CapItem, placement: str) -> str | None:
    """Why the item may not be shown in the placement now: "cap:<name>" (the first spec, in order, that refuses
    it) or "cooldown"; None when it may. Compiles the specs once per state (pass the same list each time)."""
    if not specs:
        return None
    return _reason(_checks(state, specs, placement), item)


def caps_block_reasons(
    state: CapState, specs: Sequence[CapSpec], items: Sequence[CapItem], placement: str
) -> dict[str, str]:
    """item id -> why it may not be shown, for the items the caps refuse (see `cap_block_reason`)."""
    if not specs:
        return {}
    checks = _checks(state, specs, placement)
    if not checks:
        return {}
    reasons: dict[str, str] = {}
    for item in items:
        reason = _reason(checks, item)
        if reason is not None:
            reasons[item.item_id] = reason
    return reasons


def _counted_values(item: CapItem, tag: str) -> list[str]:
    """What a category, campaign or entity cap counts of an item: no empty category or campaign; the entities
    split on the separator (even within one), empty ones left out and repeats kept (as the script always did)."""
    if tag == "c:":
        return [item.category] if item.category else []
    if tag == "m:":
        return [item.campaign] if item.campaign else []
    return [entity for entity in SEPARATOR.join(item.entities).split(SEPARATOR) if entity]


def _enforce_args(
    *,
    user_key: str,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int | None,
    retention_seconds: int | None,
) -> dict[str, Any]:
    """The enforce script's keys and arguments by name (see caps_enforce_body.lua). The counted fields are named
    here rather than in the script: string work costs the app's processes less than Redis's one thread."""
    retention = max(caps_horizon(specs), retention_seconds or 0)
    more: list[str | int | float] = []
    fields: list[str | int | float] = []
    for spec in specs:
        more += _SPEC.values(
            scope=spec.scope, max_impressions=spec.max_impressions, window_seconds=spec.window_seconds,
            this_placement="1" if spec.per_placement else "0", signature=cap_signature(spec, placement),
        )  # fmt: skip
        tag = _TAGS.get(spec.scope)
        if tag is None:
            continue
        head = f"{placement}{SEPARATOR}{tag}" if spec.per_placement else tag
        if spec.scope == SCOPE_ITEM:
            fields += [f"{head}{item.item_id}" for item in items]
        else:
            names = [[f"{head}{value}" for value in _counted_values(item, tag)] for item in items]
            fields += [len(item_names) for item_names in names]
            fields += [name for item_names in names for name in item_names]
    exempt = [position for position, item in enumerate(items, start=1) if item.pin_exempt]
    more += [len(items), *(item.item_id for item in items), len(exempt), *exempt, *fields]
    return {
        "counts": redis_keys.user_cap_counts(user_key),
        "touched": redis_keys.user_cap_touched(user_key),
        "blocks": redis_keys.user_cap_blocks(user_key),
        "cooldown": cooldown_key(user_key=user_key),
        "now": repr(now),
        "retention": retention,
        "request_id": request_id,
        "placement": placement,
        "limit": limit or 0,
        "spec_count": len(specs),
        "more": more,
    }


def caps_enforce_and_record(
    *,
    user_key: str,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int | None = None,
    retention_seconds: int | None = None,
) -> list[str]:
    """Atomically, in one script call: re-check every cap for each item in order (counting the items accepted
    before it in this call), record the accepted ones as impressions at `now`, and return the ids of the items
    refused.

    limit: accept at most this many (the slate's size): pass spare candidates after the slate's items and the
    first refused ones are replaced; items after the limit is reached are neither recorded nor refused.
    retention_seconds: how long counts are kept, the longest window of any cap of any placement (default: the
    longest of `specs`), so that a shorter cap elsewhere does not drop what a longer one counts.
    Raises redis.RedisError when Redis fails (the caller degrades). No spec: no Redis call, nothing refused."""
    if not specs or not items:
        return []
    named = _enforce_args(
        user_key=user_key,
        placement=placement,
        request_id=request_id,
        items=items,
        specs=specs,
        now=now,
        limit=limit,
        retention_seconds=retention_seconds,
    )
    reply = cast(list[bytes], enforce_script.call_named(get_redis(), log_keys=[], **named))
    return caps_refused(reply, user_key=user_key, placement=placement, request_id=request_id)


def caps_enforce_queue(
    pipeline: redis.client.Pipeline,
    *,
    user_key: str,
    placement: str,
    request_id: str,
    items: list[CapItem],
    specs: list[CapSpec],
    now: float,
    limit: int,
    retention_seconds: int | None,
    impression: ImpressionLogCall,
) -> None:
    """Queue on the caller's pipeline what `caps_enforce_and_record` does, plus the slate's impression log
    (`impression`: `impression_log_call`'s keys and arguments) when the call refuses nothing: the caller then
    serves the slate as offered, `limit` items; otherwise it logs the slate it serves itself. `caps_refused` reads
    the reply; execute with `script_pipeline_execute(..., enforce_and_log_script)`."""
    named = _enforce_args(
        user_key=user_key, placement=placement, request_id=request_id, items=items, specs=specs, now=now,
        limit=limit, retention_seconds=retention_seconds,
    )  # fmt: skip
    named["more"] += impression.args  # the IMPRESSION record after the caps' arguments
    enforce_and_log_script.queue_named(get_redis(), pipeline, log_keys=impression.keys, **named)


def caps_refused(reply: list[bytes], *, user_key: str, placement: str, request_id: str) -> list[str]:
    """The items an enforce call refused, from its reply."""
    refused = [item_id.decode() for item_id in reply]
    if refused:
        logger.info(
            "surface.cap_hit",
            extra={"user_key": user_key, "placement": placement, "request_id": request_id, "refused": len(refused)},
        )
    return refused
