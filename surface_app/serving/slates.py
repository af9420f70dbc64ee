"""Assemble the slate a storefront shows: Score's ranked list, the placement's business rules, diversity, pins,
frequency caps and fallbacks, then the impression log, in the request (hot path: no ORM, rules from the in-process
snapshot).

Degradation is the default behaviour, not an exception path: the shopper never sees an error. Each step gets
what is left of the placement's deadline:
- Score late or failing: the placement's fallback chain (by default popular items first);
- Graph (the user's online state) failing: a session-only result, from the request's context items;
- everything failing: the last slate served to this user in this placement, or the placement's default list.
`degraded` names every reason, and `surface_degraded_total{reason}` counts them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis
from django.conf import settings
from django.db import DatabaseError
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from graph_app.state.interface import (
    ImpressionLogCall,
    assignment_unit_decode,
    assignment_unit_keep_queue,
    assignment_unit_queue,
    impression_log_call,
    impression_log_queue,
    impression_log_script,
    purchased_queue,
)
from personalization import redis_keys
from personalization.cache import user_cache_writes_flush
from personalization.candidates import Candidate
from personalization.process_caches import process_cache
from personalization.rate_limits import RateLimitCheck
from personalization.redis_client import get_redis, script_pipeline_execute
from scoring_app.interface import (
    CONTEXT_SOURCE,
    CandidateSet,
    ScoreResult,
    UserState,
    candidates_retrieve,
    popular_fallback,
    similar_items,
    slate_score,
    user_state_fetch,
)
from surface_app.serving import caps as frequency_caps
from surface_app.serving.experiments import PATH_POPULARITY, Assignment
from surface_app.serving.rules import (
    CompiledRule,
    PlacementConfig,
    RulesSnapshot,
    pins_exempt_from_caps,
    refusal_check,
    rules_apply,
    snapshot_current,
    snapshot_observe,
)

if TYPE_CHECKING:
    from scoring_app.interface import BanditLog, RankerPool

logger = logging.getLogger(__name__)

# A user's last slate in a placement, the fallback when everything else fails, is kept this long.
LAST_SLATE_TTL_SECONDS = 7 * 24 * 3600
# Time kept back from a placement's deadline for the Surface's own work (rules, caps, logging).
SURFACE_RESERVE_MS = 8.0
# Items Score is asked for beyond the slate's size, so that filters and caps leave enough.
OVERFETCH = 4
LAST_SLATES_KEPT = 10_000
CONFIG_VERSION_KEY = redis_keys.SURFACE_CONFIG_VERSION

DEGRADED = Counter("surface_degraded_total", "Degraded slates, by reason.", ["reason"])
SLATES = Counter("surface_slates_total", "Slates served, by placement and Score path.", ["placement", "path"])
LAYER_SECONDS = Histogram(
    "serving_layer_seconds",
    "Time of each step of a recommendation: the user's state (Graph), retrieval and ranking (Score, ranking includes "
    "the feature fetch), rules, caps and logging (Surface), and the whole request.",
    ["layer"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0),
)
FILTERED = Counter("surface_filtered_total", "Items removed by business rules, caps and filters.", ["reason"])


@dataclass(frozen=True)
class Slate:
    request_id: str
    placement: str
    items: list[Candidate]
    confidence: float
    model_version: str | None
    degraded: list[str] = field(default_factory=list)
    # Which part of the Score layer chose the items: ranker, bandit or fallback.
    path: str = "fallback"
    # Set when the contextual bandit chose items (`scoring_app.engine.bandit.bandit_log`): logged for its learning.
    bandit: BanditLog | None = None
    variant: str = "control"
    # The experiment variant that served the slate (None: outside any experiment).
    experiment: Assignment | None = None
    # Set when the ranker drew the slate and its pool is logged (`scoring_app.engine.scoring.RankerPool`).
    ranker_pool: RankerPool | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "placement": self.placement,
            "items": [
                {
                    "item_id": item.item_id, "score": item.score, "source": item.source,
                    "explanation": item.explanation, "sources": list(item.sources), "propensity": item.propensity,
                    "rules": list(item.rules),
                }
                for item in self.items
            ],
            "confidence": self.confidence,
            "model_version": self.model_version,
            "path": self.path,
            "degraded": self.degraded,
            "experiment": self.experiment.as_dict() if self.experiment is not None else None,
        }  # fmt: skip


# The last slate served per (user, placement) in this process: what serves when Redis is down too.
_last_slates: OrderedDict[tuple[str, str], list[Candidate]] = OrderedDict()


@dataclass
class _SurfaceReads:
    """Surface's own reads, queued on the state round trip: the API key's rate limit, configuration version, traits,
    last slate, purchases, experiment assignment unit, pinned items' entities, caps."""

    user_key: str
    placement: str
    now: float
    horizon: int
    # The items the placement's pins name (their entity keys, for rules and caps, come in the same round trip).
    pinned: list[str] = field(default_factory=list)
    rate_limit: RateLimitCheck | None = None
    # What the reads found (`receive`); None when the round trip failed.
    found: _SurfaceState | None = None

    def queue(self, pipeline: redis.client.Pipeline) -> int:
        if self.rate_limit is not None:
            self.rate_limit.queue(pipeline)
        pipeline.get(CONFIG_VERSION_KEY)
        pipeline.get(redis_keys.user_traits(self.user_key))
        pipeline.get(redis_keys.user_last_slate(self.user_key, self.placement))
        purchased_queue(pipeline, user_key=self.user_key)
        assignment_unit_queue(pipeline, user_key=self.user_key)
        before = len(pipeline)
        if self.pinned:
            key = redis_keys.catalog_entities(redis_keys.partition_of(self.user_key))
            pipeline.hmget(key, self.pinned)
        if self.horizon:  # no cap, no cool-down: nothing to read
            frequency_caps.caps_queue(pipeline, user_key=self.user_key, now=self.now, horizon_seconds=self.horizon)
        return 5 + len(pipeline) - before + (self.rate_limit is not None)

    def receive(self, replies: list[Any]) -> None:
        self.found = self.decode(replies)

    def decode(self, replies: list[Any]) -> _SurfaceState:
        """The replies of `queue`, in its order; raises RateLimitExceeded first when the key is over its rate."""
        if self.rate_limit is not None:
            self.rate_limit.raise_if_refused(replies[0])
            replies = replies[1:]
        version, raw_traits, raw_last, raw_purchased, raw_unit = replies[:5]
        rest = replies[5:]
        entities: dict[str, bytes] = {}
        if self.pinned:
            entities = {item_id: payload or b"" for item_id, payload in zip(self.pinned, rest[0], strict=True)}
            rest = rest[1:]
        return _SurfaceState(
            version=version,
            traits=_json_dict(raw_traits),
            last_slate=[str(item) for item in orjson.loads(raw_last)] if raw_last else [],
            purchased={item.decode() for item in raw_purchased},
            unit=assignment_unit_decode(raw_unit, user_key=self.user_key),
            pinned_entities=entities,
            caps=frequency_caps.caps_decode(rest, now=self.now) if rest else None,
        )


@dataclass
class _SurfaceState:
    version: bytes | None
    traits: dict[str, Any]
    last_slate: list[str]
    purchased: set[str]
    unit: str  # what experiments assign the shopper by (`graph_app.state.assignment_unit`)
    pinned_entities: dict[str, bytes]  # the pinned items' entity keys (b"": none)
    caps: Any


def _degrade(degraded: list[str], reason: str) -> None:
    degraded.append(reason)
    DEGRADED.labels(reason=reason.split(":", 1)[0]).inc()


@dataclass
class PreviewOptions:
    """A dry run for the console: nothing is recorded (no impression, no cap count, no last slate), and the
    snapshot, traits or recent items can be replaced (unsaved rule edits, a made-up profile)."""

    snapshot: RulesSnapshot | None = None
    traits: dict[str, Any] | None = None
    removed: dict[str, str] = field(default_factory=dict)  # filled: item id -> why a rule or cap removed it
    pending: Any = None  # filled: what `slate_commit` needs to serve the slate after all


# Context items a request may name (a product page, a cart): the first ones are kept.
CONTEXT_ITEMS_MAX = 20


def context_items_parse(raw: str) -> list[str]:
    """The `item_id` parameter of a recommendation request: comma-separated item ids, the first CONTEXT_ITEMS_MAX."""
    return [item.strip() for item in raw.split(",") if item.strip()][:CONTEXT_ITEMS_MAX]


def slate_serve(
    *,
    user_key: str,
    placement: str,
    k: int | None = None,
    context_items: Sequence[str] = (),
    rate_limit: RateLimitCheck | None = None,
) -> Slate:
    """The slate for the shopper. `rate_limit`: the API key's request, taken in the state round trip (a refusal
    raises RateLimitExceeded before any other work; Redis down, the request goes through, degraded)."""
    return _slate_build(
        user_key=user_key, placement=placement, k=k, context_items=context_items, preview=None, rate_limit=rate_limit
    )


def slate_preview(
    *, user_key: str, placement: str, k: int | None = None, context_items: Sequence[str] = (), options: PreviewOptions
) -> Slate:
    """The slate as it would be served now (or with `options`' changes), without recording anything."""
    return _slate_build(user_key=user_key, placement=placement, k=k, context_items=context_items, preview=options)


def _slate_build(
    *,
    user_key: str,
    placement: str,
    k: int | None,
    context_items: Sequence[str],
    preview: PreviewOptions | None,
    rate_limit: RateLimitCheck | None = None,
) -> Slate:
    """Down the layers and back once: the user's state and the Surface's own reads (one round trip), Score's ranked
    items, the placement's rules and fallbacks, then the slate recorded (caps, impressions)."""
    started = time.perf_counter()
    now = time.time()
    request = _request_read(
        user_key=user_key, placement=placement, context_items=context_items, preview=preview, rate_limit=rate_limit,
        now=now,
    )  # fmt: skip
    fetched = time.perf_counter()
    state, snapshot, config, degraded = request.state, request.snapshot, request.config, request.degraded
    size = k or config.size
    want = size * OVERFETCH + len(snapshot.pinnable)
    budget_ms = config.deadline_ms * settings.SCORE_RETRIEVAL_DEADLINE_FACTOR
    scored = _score(request, placement=placement, size=size, want=want, started=started, budget_ms=budget_ms)
    slate_items, cap_items = _shelf(request, scored, user_key=user_key, placement=placement, now=now, size=size,
                                    preview=preview)  # fmt: skip
    if time.perf_counter() > started + budget_ms / 1000:
        _degrade(degraded, "deadline_exceeded")
    result = scored.result
    slate = Slate(
        request_id=uuid.uuid4().hex,
        placement=placement,
        items=slate_items[:size],
        confidence=_confidence(result, slate_items[:size], size),
        model_version=result.model_version if result is not None else state.model_version,
        degraded=degraded,
        path=scored.path or (result.path if result is not None and scored.items else "fallback"),
        bandit=result.bandit_log if result is not None else None,
        variant=result.variant if result is not None else "control",
        experiment=request.assignment,
        ranker_pool=result.ranker_pool if result is not None else None,
    )
    pending = _Pending(
        config, user_key, now, slate_items[size:], cap_items, snapshot.caps_retention_seconds, started=started
    )
    if preview is not None:
        preview.pending = pending
        return slate
    slate = _record(slate, pending)
    finished = time.perf_counter()
    retrieved = scored.retrieved or fetched
    ranked = scored.ranked or retrieved
    for layer, seconds in (
        ("graph_state", fetched - started), ("score_retrieval", retrieved - fetched),
        ("score_ranking", ranked - retrieved), ("surface", finished - ranked), ("total", finished - started),
    ):  # fmt: skip
        LAYER_SECONDS.labels(layer=layer).observe(seconds)
    SLATES.labels(placement=config.name if config.name in snapshot.placements else "other", path=slate.path).inc()
    return slate


@dataclass
class _Request:
    """What the request's first round trip found: the user's state (Graph), and the Surface's own reads with the
    rules snapshot they chose (or the preview's)."""

    state: UserState
    snapshot: RulesSnapshot
    config: PlacementConfig
    degraded: list[str]
    traits: dict[str, Any] = field(default_factory=dict)
    last_slate: list[str] = field(default_factory=list)
    purchased: set[str] = field(default_factory=set)
    cap_state: Any = None
    entity_payloads: dict[str, bytes] = field(default_factory=dict)
    # The shopper's variant of the placement's running experiment (None: outside one), and the placement whose
    # rules apply (its own, or a rules treatment's rule set).
    assignment: Assignment | None = None
    rules_of: str | None = None


def _request_read(
    *,
    user_key: str,
    placement: str,
    context_items: Sequence[str],
    preview: PreviewOptions | None,
    rate_limit: RateLimitCheck | None,
    now: float,
) -> _Request:
    current = snapshot_current()
    config = current.placement(placement)
    horizon = frequency_caps.caps_horizon(config.cap_specs) if config.cap_specs else 0
    reads = _SurfaceReads(user_key, placement, now, horizon, _pinned_for(current, placement), rate_limit)
    state = user_state_fetch(user_key=user_key, seeds=list(context_items), extra=reads)
    surface = reads.found
    snapshot = snapshot_observe(surface.version if surface is not None else None)
    request = _Request(state, snapshot, config, list(state.degraded))
    if surface is not None:
        request.traits, request.last_slate, request.purchased = surface.traits, surface.last_slate, surface.purchased
        request.cap_state, request.entity_payloads = surface.caps, surface.pinned_entities
    if preview is not None:
        request.snapshot = preview.snapshot or snapshot
        request.traits = preview.traits if preview.traits is not None else request.traits
    request.config = request.snapshot.placement(placement)
    _experiment_apply(request, placement=placement, unit=surface.unit if surface is not None else user_key)
    config = request.config
    if request.snapshot.placements and placement not in request.snapshot.placements:
        # Served all the same (a storefront's typo must not empty its shelf), but said: the defaults answered.
        _degrade(request.degraded, "placement_unknown")
    if request.cap_state is None and config.cap_specs and surface is not None:
        request.cap_state = _caps_read(user_key, config, now, request.degraded)
    return request


def _pinned_for(snapshot: RulesSnapshot, placement: str) -> list[str]:
    """The items the placement's pins name, with those of its experiment's rule sets (their entities are read in
    the first round trip, before the variant is known)."""
    pinned = _pinned_ids(snapshot.rules_for(placement))
    running = snapshot.experiments.get(placement)
    if running is None or not running.rule_sets:
        return pinned
    others = [item for rules_of in running.rule_sets for item in _pinned_ids(snapshot.rules_for(rules_of))]
    return sorted({*pinned, *others})


def _experiment_apply(request: _Request, *, placement: str, unit: str) -> None:
    """The shopper's variant of the placement's running experiment, and what its treatment changes of the request:
    the placement's config (sources, fallbacks) and whose rules apply. No read: the snapshot has it all."""
    running = request.snapshot.experiments.get(placement)
    if running is None:
        return
    assignment = request.assignment = running.assign(unit)
    treatment = assignment.treatment
    if treatment.config is not None:
        request.config = treatment.config
    request.rules_of = treatment.rules_of


@dataclass
class _Scored:
    """Score's answer for the shelf: its ranked items (or, late, retrieval's), and when each step ended."""

    items: list[Candidate] = field(default_factory=list)
    # Score was late: the unranked candidates left to fill what the fallbacks leave.
    late_candidates: list[Candidate] = field(default_factory=list)
    result: ScoreResult | None = None
    retrieved: float | None = None
    ranked: float | None = None
    # The path the slate reports when no Score path chose it (an experiment's popularity treatment).
    path: str | None = None


def _score(request: _Request, *, placement: str, size: int, want: int, started: float, budget_ms: float) -> _Scored:
    """Retrieval and ranking under the placement's deadline; Graph down, the session-only items."""
    state, config, degraded = request.state, request.config, request.degraded
    treatment = request.assignment.treatment if request.assignment is not None else None
    if treatment is not None and treatment.popularity:
        return _popularity(state, want, degraded)
    if "user_state_unavailable" in degraded:
        _degrade(degraded, "graph_unavailable")
        return _Scored(items=_session_only(state.seeds, want, degraded))
    scored = _Scored()
    candidate_set: CandidateSet | None = None
    try:
        # A set built here is stored in the feature read's round trip (or after, without one).
        candidate_set, retrieval_degraded = candidates_retrieve(state=state, sources=config.sources, defer_store=True)
        scored.retrieved = time.perf_counter()
        degraded += [*retrieval_degraded, *candidate_set.dropped]
        if (time.perf_counter() - started) * 1000 > budget_ms - SURFACE_RESERVE_MS:
            _degrade(degraded, "score_late")
            _late(scored, candidate_set.candidates[:want], context=bool(state.seeds))
        else:
            result = scored.result = slate_score(
                state=state, candidate_set=candidate_set, placement=placement, k=want, scorer=config.scorer,
                explore_slot=size - 1, model=treatment.model if treatment is not None else None,
            )  # fmt: skip
            degraded += result.degraded
            scored.items = result.items
            request.entity_payloads.update(
                (item.item_id, item.entity_payload) for item in result.items if item.entity_payload is not None
            )
            scored.ranked = time.perf_counter()
    except Exception as error:  # Score failing must not fail the shelf
        logger.exception("surface.score_failed")
        _degrade(degraded, f"score_failed:{type(error).__name__}")
        scored.items = []
    if candidate_set is not None:
        user_cache_writes_flush(candidate_set.unsaved)
    return scored


def _popularity(state: UserState, want: int, degraded: list[str]) -> _Scored:
    """An experiment's holdout: the popular items anyone without a history gets (no retrieval of the shopper's
    own, no ranker, no bandit); the rules, caps and fallbacks still apply after."""
    try:
        items = popular_fallback(state=state, limit=want)
    except DatabaseError as error:
        _degrade(degraded, f"popular_failed:{type(error).__name__}")
        items = []
    return _Scored(items=[_served(item) for item in items], path=PATH_POPULARITY)


def _late(scored: _Scored, late: list[Candidate], *, context: bool) -> None:
    """Unranked, the items related to the request's context (a product page's, a cart's) are still what the shelf
    is for: they lead. The others still beat an empty shelf: they fill what the fallbacks leave."""
    for candidate in late:
        candidate.sources = candidate.sources or (candidate.source,)
    scored.items = [item for item in late if CONTEXT_SOURCE in item.sources] if context else []
    scored.late_candidates = [item for item in late if CONTEXT_SOURCE not in item.sources] if scored.items else late


def _shelf(
    request: _Request,
    scored: _Scored,
    *,
    user_key: str,
    placement: str,
    now: float,
    size: int,
    preview: PreviewOptions | None,
) -> tuple[list[Candidate], dict[str, Any]]:
    """The slate's items in order (the spares after the first `size`), and what the caps know of each: the rules
    over Score's items, then the fallbacks, then the late candidates."""
    state, config = request.state, request.config
    seeds = set(state.seeds)
    items = [item for item in scored.items if item.item_id not in seeds]
    scored.items = items
    slate_items, cap_items, refused = _apply_rules(
        items=items, config=config, snapshot=request.snapshot, traits=request.traits, now=now,
        cap_state=request.cap_state, size=size, placement=placement, purchased=request.purchased, user_key=user_key,
        entity_payloads=request.entity_payloads, removed=preview.removed if preview is not None else None,
        rules_of=request.rules_of,
    )  # fmt: skip
    if len(slate_items) < size:
        slate_items = _fill(
            slate_items, config=config, state=state, last_slate=request.last_slate, user_key=user_key, size=size,
            degraded=request.degraded, personal=bool(items), refused=refused,
        )  # fmt: skip
    if len(slate_items) < size and scored.late_candidates:
        taken = {item.item_id for item in slate_items}
        slate_items += [
            _served(item)
            for item in scored.late_candidates
            if item.item_id not in taken and item.item_id not in state.seeds and refused(item) is None
        ][: size - len(slate_items)]
    return slate_items, cap_items


@dataclass(frozen=True)
class _Pending:
    """What recording a previewed slate needs (caps enforcement, impression log, last slate)."""

    config: PlacementConfig
    user_key: str
    now: float
    reserve: list[Candidate]
    cap_items: dict[str, Any]
    retention: int
    started: float | None = None  # when the slate's build started (perf_counter): the impression log records it


def _record(slate: Slate, pending: _Pending) -> Slate:
    if pending.config.caps and slate.items:
        slate = _caps_enforce_and_log(slate, pending)
    else:
        _impression_log(slate=slate, user_key=pending.user_key, started=pending.started)
    key = (pending.user_key, slate.placement)
    _last_slates[key] = slate.items
    _last_slates.move_to_end(key)
    while len(_last_slates) > LAST_SLATES_KEPT:
        _last_slates.popitem(last=False)
    return slate


def slate_commit(slate: Slate, options: PreviewOptions) -> Slate:
    """Serve a slate built by `slate_preview` after all (a live shelf decided to send it): caps are enforced and
    counted, the impressions logged, as `slate_serve` would have. Without rule or trait overrides only."""
    if options.pending is None or options.snapshot is not None or options.traits is not None:
        raise ValueError("only a plain dry run of slate_preview can be committed")
    return _record(slate, options.pending)


def _caps_read(user_key: str, config: PlacementConfig, now: float, degraded: list[str]) -> Any:
    """The caps' reads, when the snapshot learned of caps only in this request (a configuration change)."""
    try:
        pipeline = get_redis().pipeline(transaction=False)
        horizon = frequency_caps.caps_horizon(config.cap_specs)
        frequency_caps.caps_queue(pipeline, user_key=user_key, now=now, horizon_seconds=horizon)
        return frequency_caps.caps_decode(pipeline.execute(), now=now)
    except RedisError:
        _degrade(degraded, "caps_unavailable")
        return None


def _confidence(result: ScoreResult | None, items: list[Candidate], size: int) -> float:
    """The model's confidence; without a model, the share of slots filled from the user's own signals."""
    if result is not None and result.path != "fallback":
        return result.confidence
    personal = sum(1 for item in items if item.source not in ("popular", "fresh", "default", "last_slate"))
    return round(personal / size, 4) if size else 0.0


@process_cache("surface.last_slates")
def _last_slates_forget_all() -> None:
    """Forget the last slates this process served."""
    _last_slates.clear()


def last_slates_forget(*, user_keys: set[str]) -> None:
    """Forget the last slates this process served these users (erased shoppers)."""
    for key in [key for key in _last_slates if key[0] in user_keys]:
        _last_slates.pop(key, None)


def _json_dict(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _item_facts(items: list[Candidate], user_key: str, known: dict[str, bytes]) -> None:
    """Category, brand and entities of the items: as Score's feature read found them (`known`, item id -> entity
    keys), else from the catalog copy in Redis (one round trip)."""
    unknown = [item.item_id for item in items if item.item_id not in known]
    if unknown:
        try:
            key = redis_keys.catalog_entities(redis_keys.partition_of(user_key))  # every partition has the same copy
            read: list[Any] = get_redis().hmget(key, unknown)
            known = {**known, **{item_id: payload for item_id, payload in zip(unknown, read, strict=True) if payload}}
        except RedisError:
            pass
    for item in items:
        payload = known.get(item.item_id)
        if not isinstance(payload, bytes) or not payload:
            continue
        keys = payload.decode().split("|")
        item.entities = tuple(keys)
        for key in keys:
            kind, _, value = key.partition(":")
            if kind == "category" and not item.category:
                item.category = value
            elif kind == "brand" and not item.brand:
                item.brand = value


def _apply_rules(
    *,
    items: list[Candidate],
    config: PlacementConfig,
    snapshot: Any,
    traits: dict[str, Any],
    now: float,
    cap_state: Any,
    size: int,
    placement: str,
    purchased: set[str],
    user_key: str,
    entity_payloads: dict[str, bytes],
    removed: dict[str, str] | None = None,
    rules_of: str | None = None,
) -> tuple[list[Candidate], dict[str, Any], Callable[[Candidate], str | None]]:
    """The slate candidates in order (backfill after), and what the caps need to know of each. `rules_of`: the
    placement whose rules apply (a rules treatment's rule set), when not the placement's own."""
    rules = snapshot.rules_for(rules_of or placement)
    pinned = _pinned_ids(rules)
    extra = [Candidate(item_id, 0.0, "pin", "", ("pin",)) for item_id in pinned if item_id in snapshot.pinnable]
    _item_facts([*items, *extra], user_key, entity_payloads)
    pinned_by_id = {item.item_id: item for item in extra}
    # What pins show passes the item, category and entity caps (unless the pin opts in); they still count it.
    exempt = pins_exempt_from_caps(rules, now, traits)
    facts = {item.item_id: _cap_item(item, item.item_id in exempt) for item in [*items, *extra]}
    capped: dict[str, str] = {}
    if cap_state is not None and config.cap_specs:
        capped = frequency_caps.caps_block_reasons(cap_state, config.cap_specs, list(facts.values()), placement)

    def blocked(item: Candidate) -> str | None:
        if config.exclude_purchased and item.item_id in purchased:
            return "already_purchased"
        return capped.get(item.item_id)

    ordered, backfill, removed_counts = rules_apply(
        items=items, rules=rules, config=config, traits=traits, now=now, blocked=blocked,
        pinned_facts=pinned_by_id.get, size=size, explain=removed,
    )  # fmt: skip
    for reason, count in removed_counts.items():
        FILTERED.labels(reason=reason.split(":", 1)[0]).inc(count)
    everything = [*ordered, *backfill]
    # Pins may have set a campaign: the caps count it. An exempt item is exempt only at its pin's slot on the
    # shelf (a pin beyond the shelf's size, or an item that fills in for a refused one, meets every cap).
    facts.update(
        {
            item.item_id: _cap_item(item, item.item_id in exempt and _shown_pinned(item, size))
            for item in everything
            if item.campaign or item.item_id in exempt
        }
    )
    active_rules = [rule for rule in rules if rule.active(now, traits)]
    return [_served(item) for item in everything], facts, refusal_check(active=active_rules, blocked=blocked)


def _pinned_ids(rules: list[CompiledRule]) -> list[str]:
    return sorted({rule.item_ids[0] for rule in rules if rule.kind == "pin" and rule.item_ids})


def _shown_pinned(item: Candidate, size: int) -> bool:
    return item.pinned_slot is not None and item.pinned_slot < size


def _cap_item(item: Candidate, pin_exempt: bool = False) -> Any:
    # Entity caps count brands, creators, themes... (the category has its own scope).
    entities = tuple(key for key in item.entities if not key.startswith("category:"))
    return frequency_caps.CapItem(item.item_id, item.category, entities, item.campaign, pin_exempt)


def _served(item: Candidate) -> Candidate:
    """The item as the slate shows it: its score rounded, its provenance, the rules that touched it (fixed)."""
    item.score = round(item.score, 6)
    item.sources = item.sources or (item.source,)
    if item.rules:
        item.rules = tuple(item.rules)
    return item


def _session_only(seeds: Sequence[str], want: int, degraded: list[str]) -> list[Candidate]:
    """Graph is down: items similar to the request's own context (pgvector), with no user state."""
    found: dict[str, Candidate] = {}
    for seed in seeds:
        try:
            for candidate in similar_items(item_id=seed, k=want):
                if candidate.item_id not in found:
                    candidate.source, candidate.sources = "session", ("session",)
                    found[candidate.item_id] = candidate
        except Exception as error:
            _degrade(degraded, f"session_failed:{type(error).__name__}")
            break
    return sorted(found.values(), key=lambda item: item.score, reverse=True)[:want]


def _fill(
    items: list[Candidate],
    *,
    config: PlacementConfig,
    state: UserState,
    last_slate: list[str],
    user_key: str,
    size: int,
    degraded: list[str],
    personal: bool,
    refused: Callable[[Candidate], str | None],
) -> list[Candidate]:
    """Short of items: the placement's fallback chain, in its order, until the shelf is full. With context items (a
        product page, a cart) the items similar to them ("session") come first: popular items are not what a shelf of
        related items is for. `refused`: what the rules and caps refuse (a fallback item meets the same block lists and
    filters as the model's)."""
    seeds = state.seeds
    chosen = list(items)
    taken = {item.item_id for item in chosen} | set(seeds) | set(state.recent_items)
    steps = config.fallbacks
    if seeds and "session" in steps:
        steps = ("session", *(step for step in steps if step != "session"))
    for step in steps:
        if len(chosen) >= size:
            break
        if step == "popular":
            try:
                popular = popular_fallback(state=state, limit=size * OVERFETCH)
            except DatabaseError as error:
                _degrade(degraded, f"popular_failed:{type(error).__name__}")
                popular = []
            extra = popular
        elif step == "session":
            extra = [_served(item) for item in _session_only(seeds, size, degraded)] if seeds else []
        elif step == "last_slate":
            # Copies: the slate remembered is kept as it was served, and this request's layers fill in its items.
            remembered = _last_slates.get((user_key, config.name))
            extra = (
                [item.copied() for item in remembered]
                if remembered
                else [Candidate(i, 0.0, "last_slate", "Picked for you earlier", ("last_slate",)) for i in last_slate]
            )
        elif step == "default_list":
            extra = [Candidate(i, 0.0, "default", "Our selection", ("default",)) for i in config.default_items]
        else:
            continue
        added = 0
        for item in extra:
            if len(chosen) >= size:
                break
            if item.item_id not in taken and refused(item) is None:
                chosen.append(item)
                taken.add(item.item_id)
                added += 1
        if added and not personal:
            _degrade(degraded, f"fallback_{step}")
    return chosen


def _caps_enforce_and_log(slate: Slate, pending: _Pending) -> Slate:
    """Caps are checked again and recorded atomically in Redis as the slate is served: a refused item is replaced
    by the next eligible one (two requests of one user at once never exceed a cap). The same script call logs the
    impressions when it refuses nothing, and the slate kept for attribution rides in the same round trip; after a
    refusal the slate served is logged in a round trip of its own."""
    user_key = pending.user_key
    shown = {item.item_id for item in slate.items}
    # The reads already left out what the caps refused: the script refuses only what a concurrent request of the
    # same user just took, so as many spares as slots are plenty (each item offered costs the script work).
    spares = [item for item in pending.reserve if item.item_id not in shown][: len(slate.items)]
    offered = [*slate.items, *spares]
    record, impression = _impression_records(slate, user_key, started=pending.started)

    def queue(pipeline: redis.client.Pipeline) -> None:
        _slate_keep(pipeline, slate, user_key, record)
        frequency_caps.caps_enforce_queue(
            pipeline, user_key=user_key, placement=slate.placement, request_id=slate.request_id,
            items=[pending.cap_items.get(item.item_id) or frequency_caps.CapItem(item.item_id) for item in offered],
            specs=list(pending.config.caps), now=pending.now, limit=len(slate.items),
            retention_seconds=pending.retention, impression=impression,
        )  # fmt: skip

    try:
        reply = script_pipeline_execute(get_redis(), queue, frequency_caps.enforce_and_log_script)[-1]
    except RedisError as error:
        # Not sent again: the call may have run (a timeout), and an impression is logged at most once.
        logger.warning("surface.impression_log_failed", extra={"error": str(error), "request_id": slate.request_id})
        _degrade(slate.degraded, "caps_unavailable")
        slate.degraded.append("impression_log_failed")
        return slate
    refused = set(
        frequency_caps.caps_refused(reply, user_key=user_key, placement=slate.placement, request_id=slate.request_id)
    )
    if not refused:
        return slate
    FILTERED.labels(reason="cap").inc(len(refused))
    items = [item for item in offered if item.item_id not in refused][: len(slate.items)]
    served = Slate(**{**slate.__dict__, "items": items})
    _impression_log(slate=served, user_key=user_key, started=pending.started)
    return served


def _impression_records(
    slate: Slate, user_key: str, *, started: float | None
) -> tuple[dict[str, object], ImpressionLogCall]:
    """The record kept for attribution, and the keys and arguments that log the impression
    (`graph_app.state.interface.impression_log_call`). `started`: when the slate's build started (perf_counter)."""
    served_at = time.time()
    items: list[dict[str, object]] = [
        {"item_id": item.item_id, "slot": slot, "score": item.score, "source": item.source}
        for slot, item in enumerate(slate.items)
    ]
    record: dict[str, object] = {
        "request_id": slate.request_id,
        "user_key": user_key,
        "placement": slate.placement,
        "model_version": slate.model_version,
        "served_at": served_at,
        "items": items,
    }
    # The log also keeps which arm and path served, and the rules that touched each item (not needed in the
    # slate kept for attribution).
    logged_items = [
        {**entry, "rules": list(item.rules)} if item.rules else entry
        for entry, item in zip(items, slate.items, strict=True)
    ]
    if slate.path == "ranker":
        # The ranker's logging propensities (apart from the bandit's) and the pool it drew from, for off-policy
        # evaluation (`graph_app.state.ranker_log`).
        logged_items = [
            {**entry, "logging_propensity": item.logging_propensity} if item.logging_propensity is not None else entry
            for entry, item in zip(logged_items, slate.items, strict=True)
        ]
    logged: dict[str, object] = {
        **record, "items": logged_items, "variant": slate.variant, "path": slate.path,
        # What an experiment's results need of each slate: its variant, its build time so far, and whether it
        # degraded (the guardrails).
        "experiment": slate.experiment.logged() if slate.experiment is not None else None,
        "serving_ms": round((time.perf_counter() - started) * 1000, 3) if started is not None else None,
        "degraded": bool(slate.degraded),
    }  # fmt: skip
    if slate.ranker_pool is not None:
        logged["ranker_pool"] = slate.ranker_pool.record(slate.items)
    if slate.bandit is not None:
        # Only the log needs what the bandit learns from (not the slate kept in Redis for attribution): its
        # items carry their propensity and features, and the offered actions it did not pick ride along once.
        picks = slate.bandit.picks
        logged_items = [
            {**item, "propensity": pick.propensity, "features": pick.features}
            if (pick := picks.get(str(item["item_id"]))) is not None
            else item
            for item in logged_items
        ]
        bandit = {"shared": slate.bandit.shared, "unshown": slate.bandit.unshown}
        logged = {**logged, "items": logged_items, "bandit": bandit}
    impression = impression_log_call(
        user_key=user_key, placement=slate.placement, served_at=served_at, record=logged,
        item_ids=[item.item_id for item in slate.items],
    )  # fmt: skip
    return record, impression


def _slate_keep(pipeline: redis.client.Pipeline, slate: Slate, user_key: str, record: dict[str, object]) -> None:
    """The slate kept for attribution (SURFACE_SLATE_KEEP_SECONDS; the impression log covers the rest of the
    attribution window), and as the user's last in the placement."""
    pipeline.set(redis_keys.slate(slate.request_id), orjson.dumps(record), ex=settings.SURFACE_SLATE_KEEP_SECONDS)
    pipeline.set(
        redis_keys.user_last_slate(user_key, slate.placement),
        orjson.dumps([item.item_id for item in slate.items]), ex=LAST_SLATE_TTL_SECONDS,
    )  # fmt: skip
    if slate.experiment is not None:  # served in an experiment: the shopper keeps the unit it was assigned by
        assignment_unit_keep_queue(pipeline, user_key=user_key, unit=slate.experiment.unit)


def _impression_log(*, slate: Slate, user_key: str, started: float | None = None) -> None:
    """The served slate, kept for attribution and logged as impressions, in one round trip."""
    record, impression = _impression_records(slate, user_key, started=started)
    client = get_redis()

    def queue(pipeline: redis.client.Pipeline) -> None:
        _slate_keep(pipeline, slate, user_key, record)
        if slate.items:
            impression_log_queue(client, pipeline, call=impression)

    try:
        script_pipeline_execute(client, queue, impression_log_script)
    except RedisError as error:
        logger.warning("surface.impression_log_failed", extra={"error": str(error), "request_id": slate.request_id})
        slate.degraded.append("impression_log_failed")
