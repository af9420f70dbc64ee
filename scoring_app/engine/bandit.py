"""The contextual bandit on the hot path: Vowpal Wabbit's `cb_explore_adf` fills a slot or two of a ranked slate
(a new item's; the next-best candidates' when the ranker is unsure) and the whole slate only for users with no
history when no ranker serves, and logs with every item it picked the probability it had.

Exploration is SquareCB rather than epsilon-greedy: epsilon-greedy puts 1 - epsilon on one action and spreads the
rest evenly, so once the first slot is taken the other slots of a slate would be uniformly random. SquareCB gives
each action a probability that falls with its predicted gap to the best one (1 / (n + gamma * gap)), so filling k
slots by sampling without replacement keeps a sensible order, and exploration shrinks as the model gets surer.

Plain Python over dataclasses (no ORM). Thread safety: a VW workspace is not safe to use from two threads (it
parses examples into shared state), so serving predicts under one process-wide lock (a prediction over 50 actions
takes well under a millisecond, and VW holds the GIL anyway); learning never touches a serving workspace, it runs in
the Celery worker on its own copy loaded from the registry's bytes.
"""

from __future__ import annotations

import hashlib
import math
import random
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vowpalwabbit
from redis.exceptions import RedisError

from graph_app.interface import FeatureMatrix, UserAffinity, features_fetch
from personalization.candidates import Candidate
from scoring_app.engine import registry

BANDIT = "bandit"
# Bounds the work of one decision (VW scores every action): the retrieval's best candidates, in its order.
MAX_BANDIT_ACTIONS = 50
# U: the shared context (user, placement, time), A: the action's attributes, crossed (-q UA) so that the bandit
# learns which kinds of items suit which users and placements; I: the item itself, not crossed (per-item effect).
VW_ARGUMENTS = ["--cb_explore_adf", "--squarecb", "--quadratic", "UA", "--bit_precision", "20", "--quiet"]
TOP_CATEGORIES = 3
TOP_ENTITIES = 5
ENTITIES_PER_ITEM = 5

# VW's text format: whitespace separates features, "|" starts a namespace, ":" gives a value.
_TOKEN = str.maketrans({":": "=", "|": "/", " ": "_", "\t": "_", "\n": "_", "\r": "_"})
_predict_lock = threading.Lock()


@dataclass(frozen=True)
class BanditItem:
    """What the bandit knows of a candidate beyond retrieval; unknown facts stay NaN or empty."""

    category: str = ""
    entities: tuple[str, ...] = ()  # "kind:id" keys of the item's other knowledge-graph entities
    popularity_1d: float = math.nan
    age_days: float = math.nan


@dataclass(frozen=True)
class BanditContext:
    placement: str
    hour: int  # 0-23, UTC
    new_user: bool | None  # None: the user's state could not be read
    # Why the bandit serves this request (new_user, new_items, missing_features, low_confidence): the bandit
    # learns each regime's behaviour separately.
    reason: str = ""
    top_categories: tuple[str, ...] = ()
    top_entities: tuple[str, ...] = ()
    items: Mapping[str, BanditItem] = field(default_factory=dict)


@dataclass(frozen=True)
class BanditPick:
    item_id: str
    slot: int  # the order in which the bandit picked it (0 first)
    propensity: float  # P(this item for this slot | the items picked for the earlier slots)
    features: str  # the action's VW features, logged so the bandit can learn from the outcome


@dataclass(frozen=True)
class BanditLog:
    """What the impression log keeps of one decision: the shared features and every action offered, so that a
    reward can later be learned against the alternatives the bandit had (see `bandit_log`)."""

    shared: str
    picks: dict[str, BanditPick]
    unshown: list[tuple[str, str]]  # (item id, features) of the offered actions the bandit did not pick


def _token(text: str) -> str:
    return text.translate(_TOKEN)


def _hour_bucket(hour: int) -> str:
    return ("night", "morning", "afternoon", "evening")[(hour % 24) // 6]


def _popularity_bucket(value: float) -> str:
    return "na" if math.isnan(value) else str(min(12, int(math.log2(1.0 + max(0.0, value)))))


def _age_bucket(days: float) -> str:
    if math.isnan(days):
        return "na"
    for limit, name in ((1, "day"), (7, "week"), (30, "month"), (180, "season")):
        if days < limit:
            return name
    return "old"


def shared_features(context: BanditContext) -> str:
    user = "unknown" if context.new_user is None else ("new" if context.new_user else "known")
    parts = [f"shared |U p={_token(context.placement)} h={_hour_bucket(context.hour)} u={user}"]
    if context.reason:
        parts.append(f"r={_token(context.reason)}")
    parts += [f"c={_token(category)}" for category in context.top_categories]
    parts += [f"e={_token(entity)}" for entity in context.top_entities]
    return " ".join(parts)


def action_features(context: BanditContext, candidate: Candidate, rank: int) -> str:
    item = context.items.get(candidate.item_id) or BanditItem()
    parts = [
        f"|A s={_token(candidate.source)} pop={_popularity_bucket(item.popularity_1d)}",
        f"age={_age_bucket(item.age_days)} rk={int(math.log2(1 + rank))}",
    ]
    if item.category:
        parts.append(f"c={_token(item.category)}")
        if item.category in context.top_categories:
            parts.append("m=c")  # generalises "likes what they liked" across categories
    entities = item.entities[:ENTITIES_PER_ITEM]
    parts += [f"e={_token(entity)}" for entity in entities]
    if any(entity in context.top_entities for entity in entities):
        parts.append("m=e")
    parts.append(f"|I {_token(candidate.item_id)}")
    return " ".join(parts)


def _offered(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The actions of a decision: the first MAX_BANDIT_ACTIONS distinct candidates, in retrieval order."""
    seen: set[str] = set()
    offered: list[Candidate] = []
    for candidate in candidates:
        if candidate.item_id not in seen:
            seen.add(candidate.item_id)
            offered.append(candidate)
            if len(offered) >= MAX_BANDIT_ACTIONS:
                break
    return offered


def bandit_pmf(model: vowpalwabbit.Workspace, shared: str, actions: Sequence[str]) -> list[float]:
    """VW's probability of each action, in the order given."""
    with _predict_lock:
        prediction: Any = model.predict([shared, *actions])
    pmf = [float(value) for value in prediction]
    if len(pmf) != len(actions):
        raise ValueError(f"the bandit returned {len(pmf)} probabilities for {len(actions)} actions")
    return [value if math.isfinite(value) and value > 0 else 0.0 for value in pmf]


def bandit_actions(context: BanditContext, candidates: Sequence[Candidate]) -> list[str]:
    """The VW lines of the actions a decision over these candidates offers (what `bandit_choose` and `bandit_log`
    build when not given them: a caller that needs both builds them once)."""
    return [action_features(context, candidate, rank) for rank, candidate in enumerate(_offered(candidates))]


def bandit_choose(
    *,
    model: vowpalwabbit.Workspace,
    context: BanditContext,
    candidates: list[Candidate],
    k: int,
    rng: random.Random,
    actions: Sequence[str] | None = None,
) -> list[BanditPick]:
    """Pick up to k distinct items: one VW prediction gives a PMF over the offered candidates, then each slot is
    sampled from the PMF renormalized over the items not picked yet; its propensity is that conditional
    probability. Put the picks in the slate in this order (a later pick's propensity assumes the earlier ones).
    `actions`: `bandit_actions` of the same context and candidates, when the caller has them."""
    offered = _offered(candidates)
    if k <= 0 or not offered:
        return []
    if actions is None:
        actions = bandit_actions(context, offered)
    weights = bandit_pmf(model, shared_features(context), actions)
    remaining = list(range(len(offered)))
    picks: list[BanditPick] = []
    for slot in range(min(k, len(offered))):
        total = math.fsum(weights[index] for index in remaining)
        if total <= 0:
            # The PMF gave the rest nothing (cannot happen with SquareCB): uniform, so every pick stays loggable.
            position = rng.randrange(len(remaining))
            propensity = 1.0 / len(remaining)
        else:
            position = _sample(remaining, weights, rng.random() * total)
            propensity = weights[remaining[position]] / total
        index = remaining.pop(position)
        picks.append(BanditPick(offered[index].item_id, slot, min(1.0, propensity), actions[index]))
    return picks


def exploration_window(*, user_key: str, placement: str, now: float, seconds: float) -> int:
    """The user's exploration window in the placement at `now`: windows are `seconds` long and each user's start at
    an offset of their own, so that the shelves of all users do not change at the same moment."""
    digest = hashlib.blake2b(f"{user_key}\x1f{placement}".encode(), digest_size=8).digest()
    return int((now + int.from_bytes(digest, "big") % max(1, int(seconds))) // seconds)


def exploration_rng(*, user_key: str, placement: str, now: float, seconds: float) -> random.Random:
    """The random numbers of the bandit's picks for this user in this placement, the same within a window of
    `seconds` (SCORE_EXPLORATION_RESEED_SECONDS; 0: fresh ones every request). Repeated requests (a refresh, a
    back button, a live shelf) then show the same picks instead of reshuffling the explored slots: a shelf that
    changes with no new event or model reads as noise. The picks stay random across users and windows with the
    logged propensities; the price is that a user's repeated impressions within a window are one draw, logged
    again each time. Sampling is by inverse CDF, one uniform number a slot, so a small change of the model's PMF
    (a learning update) moves few picks."""
    return random.Random(exploration_seed(user_key=user_key, placement=placement, now=now, seconds=seconds))


def exploration_seed(*, user_key: str, placement: str, now: float, seconds: float, stream: str = "") -> int | None:
    """The seed of the user's exploration in the placement for the window holding `now` (None: `seconds` <= 0, fresh
    numbers every request). `stream` names another user of the same windows (the ranker's draw), so that its
    numbers are not the bandit's."""
    if seconds <= 0:
        return None
    window = exploration_window(user_key=user_key, placement=placement, now=now, seconds=seconds)
    prefix = f"{stream}\x1f" if stream else ""
    digest = hashlib.blake2b(f"{prefix}{user_key}\x1f{placement}\x1f{window}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _sample(remaining: list[int], weights: list[float], threshold: float) -> int:
    cumulative = 0.0
    last_positive = 0
    for position, index in enumerate(remaining):
        if weights[index] > 0:
            cumulative += weights[index]
            last_positive = position
            if threshold < cumulative:
                return position
    return last_positive  # rounding left the threshold past the sum: the last item with any probability


def bandit_log(
    *,
    context: BanditContext,
    candidates: list[Candidate],
    picks: list[BanditPick],
    actions: Sequence[str] | None = None,
) -> BanditLog:
    """What to put on the Slate (`Slate.bandit`) so the impression log keeps the decision for learning; pass the
    same candidates (and `actions`, if any) as to `bandit_choose`."""
    chosen = {pick.item_id: pick for pick in picks}
    offered = _offered(candidates)
    if actions is None:
        actions = bandit_actions(context, offered)
    unshown = [
        (candidate.item_id, line)
        for candidate, line in zip(offered, actions, strict=True)
        if candidate.item_id not in chosen
    ]
    return BanditLog(shared_features(context), chosen, unshown)


def bandit_context_build(
    *,
    placement: str,
    now: float,
    reason: str,
    item_ids: list[str],
    affinity: UserAffinity,
    has_recent_items: bool,
    entities: Sequence[bytes | None],
    matrix: FeatureMatrix,
) -> BanditContext:
    """The context from the feature store's reads: the user's decayed affinities, the items' entity keys
    ("category:x|brand:y") and their feature matrix (popularity, age)."""
    affinity_valid = affinity.valid(now)
    # Every counter shares one decay factor, so the raw values rank the entities correctly.
    top_categories = affinity.strongest(categories=True, count=TOP_CATEGORIES) if affinity_valid else []
    top_entities = affinity.strongest(categories=False, count=TOP_ENTITIES) if affinity_valid else []
    popularity = matrix.column("item_popularity_1d")
    age = matrix.column("item_age_days")
    items: dict[str, BanditItem] = {}
    for row, (item_id, payload) in enumerate(zip(item_ids, entities, strict=True)):
        keys = payload.decode().split("|") if payload else []
        category = next((key[9:] for key in keys if key.startswith("category:")), "")
        items[item_id] = BanditItem(
            category=category,
            entities=tuple(key for key in keys if key and not key.startswith("category:")),
            popularity_1d=float(popularity[row]),
            age_days=float(age[row]),
        )
    return BanditContext(
        placement=placement,
        hour=time.gmtime(now).tm_hour,
        new_user=not affinity_valid and not has_recent_items,
        reason=reason,
        top_categories=tuple(top_categories),
        top_entities=tuple(top_entities),
        items=items,
    )


def bandit_context_from_features(
    *, placement: str, now: float, reason: str, candidates: list[Candidate], features: FeatureMatrix
) -> BanditContext:
    """The context from a feature matrix already fetched for these candidates (rows in the same order)."""
    offered = _offered(candidates)
    rows = {item_id: row for row, item_id in enumerate(features.item_ids)}
    chosen = features.rows([rows[candidate.item_id] for candidate in offered])
    return bandit_context_build(
        placement=placement, now=now, reason=reason, item_ids=chosen.item_ids, affinity=chosen.affinity,
        has_recent_items=chosen.recent_valid, entities=chosen.entities, matrix=chosen,
    )  # fmt: skip


def bandit_context_fetch(
    *, user_key: str, placement: str, candidates: list[Candidate], now: float, reason: str = ""
) -> BanditContext:
    """The bandit's context read from the feature store (serving passes the features it already read to
    `bandit_context_from_features` instead). Redis down: a context with nothing known, which the bandit still
    serves (its features say "unknown")."""
    item_ids = [candidate.item_id for candidate in _offered(candidates)]
    try:
        features = features_fetch(user_key=user_key, item_ids=item_ids, placement=placement, now=now)
    except RedisError:
        return BanditContext(placement=placement, hour=time.gmtime(now).tm_hour, new_user=None, reason=reason)
    return bandit_context_from_features(
        placement=placement, now=now, reason=reason, candidates=candidates, features=features
    )


def bandit_example(*, shared: str, actions: Sequence[str], chosen: int, cost: float, propensity: float) -> list[str]:
    """A logged decision as a VW ADF example: the chosen action carries "0:cost:probability"."""
    label = f"0:{cost!r}:{propensity!r} "
    return [shared, *(label + line if index == chosen else line for index, line in enumerate(actions))]


def bandit_model_new() -> vowpalwabbit.Workspace:
    """The first model: it knows nothing, so its PMF is uniform over the offered actions."""
    return vowpalwabbit.Workspace(arg_list=VW_ARGUMENTS)


def bandit_model_load(artifact: bytes) -> vowpalwabbit.Workspace:
    """A workspace from stored bytes; VW keeps its options (--cb_explore_adf, --squarecb...) in the model file."""
    with tempfile.TemporaryDirectory(prefix="bandit-") as folder:
        path = Path(folder) / "model.vw"
        path.write_bytes(artifact)
        return vowpalwabbit.Workspace(arg_list=["--quiet", "--initial_regressor", str(path)])


def bandit_model_dump(workspace: vowpalwabbit.Workspace) -> bytes:
    """The model's bytes with its learning state (VW 9 saves resumable models by default, so learning continues
    exactly where it stopped)."""
    with tempfile.TemporaryDirectory(prefix="bandit-") as folder:
        path = Path(folder) / "model.vw"
        workspace.save(str(path))
        return path.read_bytes()


def serving_bandit(*, user_key: str, version: str | None = None) -> registry.ServingModel | None:
    """The bandit serving the user (`version`: an experiment's, when loaded)."""
    return registry.serving_model(BANDIT, user_key=user_key, version=version)


registry.register_loader(BANDIT, bandit_model_load)
