"""The offline materialization: point-in-time correct feature rows for (user, item, placement, as_of), computed
from the PostgreSQL event log with the same definitions as the online store (control plane: SQL and ORM).

Only what happened by `as_of` counts, late events included: like the online path, which applies an event that
arrived more than the 48 h dedupe window after it happened once the log stored it (`graph_app.state.history`), and
imported history too. Catalog facts (price, stock, entities, embeddings) are the current ones: the catalog keeps
no history.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from django.db import transaction

from graph_app.features.decayed_sums import decayed_sums
from graph_app.features.definitions import (
    AFFINITY_HALF_LIFE_SECONDS,
    AFFINITY_TTL_SECONDS,
    CTR_HALF_LIFE_SECONDS,
    DAY,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURES,
    POPULARITY_HALF_LIVES,
    RECENT_ITEMS_FOR_SIMILARITY,
    smoothed_ctr,
    trend,
)
from graph_app.features.user_affinity import entities_kept, weakest_dropped
from graph_app.models import Item, ItemEntity
from graph_app.online import entity_keys
from graph_app.progress import Progress
from graph_app.state.custom_types import event_types
from graph_app.state.event_types import EventType
from graph_app.state.log_reads import ITEM_EVENTS_SERIES_SQL, PLACEMENT_IMPRESSIONS_SERIES_SQL, user_events_logged
from personalization.db_router import lag_tolerant_reads, read_connection

TTL = {feature.name: feature.ttl_seconds for feature in FEATURES}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FeatureRequest:
    user_key: str
    item_id: str
    placement: str
    as_of: datetime


def _entity_links(item_ids: set[str] | None) -> dict[str, list[tuple[str, str]]]:
    rows = ItemEntity.objects.all() if item_ids is None else ItemEntity.objects.filter(item__external_id__in=item_ids)
    links: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item_id, kind, external_id in rows.values_list(
        "item__external_id", "entity__kind", "entity__external_id"
    ).order_by("item__external_id", "entity__kind", "entity__external_id"):
        links[item_id].append((kind, external_id))
    return links


def catalog_entity_keys(*, item_ids: set[str] | None = None) -> dict[str, str]:
    """Item id -> its entity keys as the ingest script reads them ("category:x|brand:y", "" for none), from the
    catalog in PostgreSQL; every item when `item_ids` is None."""
    links = _entity_links(item_ids)
    items = Item.objects.all() if item_ids is None else Item.objects.filter(external_id__in=item_ids)
    return {
        item_id: entity_keys(category=category, entities=links.get(item_id, []))
        for item_id, category in items.values_list("external_id", "category")
    }


def _catalog(
    item_ids: set[str],
) -> tuple[dict[str, list[str]], dict[str, tuple[float, bool, float, np.ndarray | None]]]:
    links = _entity_links(item_ids)
    keys: dict[str, list[str]] = {}
    facts: dict[str, tuple[float, bool, float, np.ndarray | None]] = {}
    for item_id, category, price, in_stock, created, vector in Item.objects.filter(
        external_id__in=item_ids
    ).values_list("external_id", "category", "price", "in_stock", "created_at", "embedding"):
        encoded = entity_keys(category=category, entities=links.get(item_id, []))
        keys[item_id] = encoded.split("|") if encoded else []
        facts[item_id] = (
            math.nan if price is None else float(price),
            in_stock,
            created.timestamp(),
            None if vector is None else np.asarray(vector, dtype=np.float32),
        )
    return keys, facts


# Rows fetched at a time when a series' events are streamed into arrays (a popular item has a fifth of the log).
SERIES_CHUNK_ROWS = 200_000


def _series_read(sql: str, params: dict[str, object], kinds: tuple[type, ...]) -> list[np.ndarray]:
    """The query's columns as arrays of `kinds`, streamed (millions of rows: no list of tuples)."""
    parts: list[list[np.ndarray]] = []
    progress = Progress("offline features: events read", total=None)
    connection = read_connection()  # chosen before the transaction: a read inside one on the primary stays there
    with transaction.atomic(using=connection.alias), connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(SERIES_CHUNK_ROWS):
            count = len(rows)
            parts.append([np.fromiter((row[index] for row in rows), kind, count) for index, kind in enumerate(kinds)])
            progress.advance(count)
    progress.finish()
    return [
        np.concatenate([part[index] for part in parts]) if parts else np.zeros(0, dtype=kind)
        for index, kind in enumerate(kinds)
    ]


def features_offline(*, requests: list[FeatureRequest], hidden: Collection[tuple[str, str]] = ()) -> np.ndarray:
    """One row per request, columns in FEATURE_NAMES order, NaN where missing. `hidden`: (user, item) pairs whose
    events the rows must not see (training's held-out labels), as if they were not in the log."""
    return features_offline_sets(sets=[(requests, hidden)])[0]


# Training's and the skew checks' rows as of past instants: a replica a few seconds behind gives the same values.
@lag_tolerant_reads()
def features_offline_sets(
    *, sets: Sequence[tuple[list[FeatureRequest], Collection[tuple[str, str]]]]
) -> list[np.ndarray]:
    """`features_offline` of several (requests, hidden) sets, their items' and users' events read once for all:
    the ranker's candidate sets share most of their items, a million-item log's events a read each otherwise."""
    results = [np.full((len(requests), len(FEATURE_NAMES)), np.nan) for requests, _ in sets]
    everything = [request for requests, _ in sets for request in requests]
    if not everything:
        return results
    types = event_types()
    weighted = {name: kind.popularity_weight for name, kind in types.items() if kind.popularity_weight > 0}
    until = max(request.as_of for request in everything)
    user_events_all = user_events_logged(users=sorted({r.user_key for r in everything}), until=until)
    hidden_pairs = sorted({pair for _, hidden in sets for pair in hidden})
    hidden_number = {pair: number for number, pair in enumerate(hidden_pairs, start=1)}
    item_ids = {request.item_id for request in everything}
    keys, facts = _catalog(item_ids | {item for _, item, _, _ in user_events_all})
    # Each item's events are read once, and every row's sums computed from them (`decayed_sums`): a popular item
    # is a candidate of most users, each judged user's rows as of their own instant.
    items = sorted(item_ids)
    item_number = {item: number for number, item in enumerate(items)}
    pairs = sorted({(request.item_id, request.placement) for request in everything})
    pair_number = {pair: number for number, pair in enumerate(pairs)}
    placements = sorted({placement for _, placement in pairs})
    series, times, weights, clicked_in, hidden_in = _series_read(
        ITEM_EVENTS_SERIES_SQL,
        {"series": items, "until": until, "types": list(weighted), "weights": list(weighted.values()),
         "placements": placements,
         "hidden_users": [user for user, _ in hidden_pairs], "hidden_items": [item for _, item in hidden_pairs]},
        (np.int64, np.int64, np.float64, np.int64, np.int64),
    )  # fmt: skip
    # Clicks as series of (item, placement) pairs: a click's pair number, or -1 for a pair no row asks for.
    placement_number = {placement: number for number, placement in enumerate(placements, start=1)}
    pair_of = np.full((len(items), len(placements) + 1), -1, dtype=np.int64)
    for (item, placement), number in pair_number.items():
        pair_of[item_number[item], placement_number[placement]] = number
    click_pairs = pair_of[series, clicked_in]
    impression_series, impression_times, _ = _series_read(
        PLACEMENT_IMPRESSIONS_SERIES_SQL,
        {"series": [item for item, _ in pairs], "placements": [placement for _, placement in pairs], "until": until},
        (np.int64, np.int64, np.float64),
    )
    for (requests, hidden), values in zip(sets, results, strict=True):
        if not requests:
            continue
        hidden_set = set(hidden)
        # This set's hidden events (number 0: nobody's): out of its sums, as if they were not in the log.
        own_hidden = np.zeros(len(hidden_pairs) + 1, dtype=bool)
        own_hidden[[hidden_number[pair] for pair in hidden_set]] = True
        visible = ~own_hidden[hidden_in]
        user_events = [event for event in user_events_all if (event[0], event[1]) not in hidden_set]
        _set_features(
            values, requests, user_events, types, keys, facts,
            row_items=np.fromiter((item_number[r.item_id] for r in requests), np.int64, len(requests)),
            row_pairs=np.fromiter((pair_number[r.item_id, r.placement] for r in requests), np.int64, len(requests)),
            events=(series[visible], times[visible], weights[visible], click_pairs[visible]),
            impressions=(impression_series, impression_times),
        )  # fmt: skip
    return results


def _set_features(
    values: np.ndarray,
    requests: list[FeatureRequest],
    user_events: list[tuple[str, str, str, float]],
    types: dict[str, EventType],
    keys: dict[str, list[str]],
    facts: dict[str, tuple[float, bool, float, np.ndarray | None]],
    *,
    row_items: np.ndarray,
    row_pairs: np.ndarray,
    events: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    impressions: tuple[np.ndarray, np.ndarray],
) -> None:
    """Fill `values` (one row per request) from the events the set may see: its items' (series, time, weight, click
    pair) and its users' log."""
    series, times, weights, click_pairs = events
    row_times = np.fromiter((_microseconds(request.as_of) for request in requests), np.int64, len(requests))
    counted = weights > 0
    popularity, latest = decayed_sums(
        event_series=series[counted], event_times=times[counted], event_weights=weights[counted],
        half_lives=list(POPULARITY_HALF_LIVES.values()), query_series=row_items, query_times=row_times,
    )  # fmt: skip
    wanted = click_pairs >= 0
    order = np.argsort(click_pairs[wanted], kind="stable")  # by pair, each pair's clicks still in time order
    clicks, _ = decayed_sums(
        event_series=click_pairs[wanted][order], event_times=times[wanted][order],
        event_weights=np.ones(int(wanted.sum())), half_lives=[CTR_HALF_LIFE_SECONDS],
        query_series=row_pairs, query_times=row_times,
    )  # fmt: skip
    impression_series, impression_times = impressions
    shown, _ = decayed_sums(
        event_series=impression_series, event_times=impression_times, event_weights=np.ones(len(impression_series)),
        half_lives=[CTR_HALF_LIFE_SECONDS], query_series=row_pairs, query_times=row_times,
    )  # fmt: skip

    by_user: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for user_id, item_id, type_name, ts in user_events:
        by_user[user_id].append((item_id, type_name, ts))

    # Rows of one query share a user and an instant: replay the user's log once for all of them.
    states: dict[tuple[str, float], _UserState] = {}
    for row, request in enumerate(requests):
        as_of = request.as_of.timestamp()
        seen = float(latest[row])
        item_sums = None if math.isnan(seen) else (*popularity[row].tolist(), seen)
        _item_features(values[row], request, as_of, item_sums, facts)
        ctr = smoothed_ctr(float(clicks[row, 0]), float(shown[row, 0]))
        values[row, FEATURE_INDEX["item_placement_ctr"]] = ctr
        state_key = (request.user_key, as_of)
        state = states.get(state_key)
        if state is None:
            state = states[state_key] = _user_state(as_of, by_user.get(request.user_key, []), types, keys, facts)
        _user_features(values[row], request, as_of, state, keys, facts)


def _microseconds(moment: datetime) -> int:
    """A datetime as integer microseconds since the epoch, exactly (as the SQL above turns `occurred_at`)."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _item_features(
    row: np.ndarray,
    request: FeatureRequest,
    as_of: float,
    popularity: tuple[float, float, float, float] | None,
    facts: dict[str, tuple[float, bool, float, np.ndarray | None]],
) -> None:
    for position, window in enumerate(POPULARITY_HALF_LIVES):
        name = f"item_popularity_{window}"
        if popularity is None:
            row[FEATURE_INDEX[name]] = 0.0
            continue
        ttl = TTL[name]
        stale = ttl is not None and as_of - popularity[3] > ttl
        row[FEATURE_INDEX[name]] = math.nan if stale else popularity[position]
    row[FEATURE_INDEX["item_trend"]] = trend(
        row[FEATURE_INDEX["item_popularity_1h"]], row[FEATURE_INDEX["item_popularity_1d"]]
    )
    fact = facts.get(request.item_id)
    if fact is not None:
        price, in_stock, created_at, _ = fact
        row[FEATURE_INDEX["item_price"]] = price
        row[FEATURE_INDEX["item_in_stock"]] = 1.0 if in_stock else 0.0
        row[FEATURE_INDEX["item_age_days"]] = (as_of - created_at) / DAY


@dataclass
class _UserState:
    """What the online script holds for a user at `as_of`, replayed from the log (shared by all their rows)."""

    frequency: dict[str, float]
    last_seen: dict[str, float]
    latest_affinity_event: float
    recent: list[str]
    latest_interest_event: float
    taste: np.ndarray | None  # normalized mean embedding of the recent items


def _user_state(
    as_of: float,
    events: list[tuple[str, str, float]],
    types: dict[str, EventType],
    keys: dict[str, list[str]],
    facts: dict[str, tuple[float, bool, float, np.ndarray | None]],
) -> _UserState:
    frequency: dict[str, float] = defaultdict(float)
    last_seen: dict[str, float] = {}
    latest_affinity_event = -math.inf
    recent: list[str] = []
    latest_interest_event = -math.inf
    kept = entities_kept()
    # Like the online script: user state starts afresh after a gap longer than its TTL (by event time).
    for item_id, type_name, ts in events:
        if ts > as_of:
            break
        kind = types.get(type_name)
        if kind is None:
            continue
        if kind.marks_interest:
            if ts - latest_interest_event > AFFINITY_TTL_SECONDS:
                recent = []
            if item_id in recent:
                recent.remove(item_id)
            recent.insert(0, item_id)
            latest_interest_event = max(latest_interest_event, ts)
        if kind.popularity_weight > 0 and keys.get(item_id):
            if ts - latest_affinity_event > AFFINITY_TTL_SECONDS:
                frequency.clear()
                last_seen.clear()
            latest_affinity_event = max(latest_affinity_event, ts)
            for key in keys[item_id]:
                frequency[key] += kind.popularity_weight * 2.0 ** (-(as_of - ts) / AFFINITY_HALF_LIFE_SECONDS)
                last_seen[key] = max(last_seen.get(key, -math.inf), ts)
            # The online hash keeps the strongest entities only (values at as_of rank as the stored ones do).
            for dropped in weakest_dropped(frequency, kept):
                del last_seen[dropped]
    taste = None
    vectors = [
        facts[item][3] for item in recent[:RECENT_ITEMS_FOR_SIMILARITY] if item in facts and facts[item][3] is not None
    ]
    if vectors:
        mean = np.mean(vectors, axis=0).astype(np.float64)
        norm = float(np.linalg.norm(mean))
        taste = mean / norm if norm else None
    return _UserState(frequency, last_seen, latest_affinity_event, recent, latest_interest_event, taste)


def _user_features(
    row: np.ndarray,
    request: FeatureRequest,
    as_of: float,
    state: _UserState,
    keys: dict[str, list[str]],
    facts: dict[str, tuple[float, bool, float, np.ndarray | None]],
) -> None:
    # A user's online state expires its TTL after the latest event that updated it.
    if state.latest_affinity_event + AFFINITY_TTL_SECONDS > as_of:
        candidate_keys = keys.get(request.item_id, [])
        category = next((key for key in candidate_keys if key.startswith("category:")), None)
        row[FEATURE_INDEX["user_category_frequency"]] = state.frequency.get(category, 0.0) if category else 0.0
        row[FEATURE_INDEX["user_category_recency_days"]] = (
            (as_of - state.last_seen[category]) / DAY if category in state.last_seen else math.nan
        )
        row[FEATURE_INDEX["user_item_entity_affinity"]] = sum(
            state.frequency.get(key, 0.0) for key in candidate_keys if not key.startswith("category:")
        )
    if state.latest_interest_event + AFFINITY_TTL_SECONDS <= as_of or state.taste is None:
        return
    fact = facts.get(request.item_id)
    if fact is None or fact[3] is None:
        return
    item_norm = float(np.linalg.norm(fact[3]))
    if item_norm:
        row[FEATURE_INDEX["user_item_similarity"]] = float(fact[3].astype(np.float64) @ state.taste) / item_norm
