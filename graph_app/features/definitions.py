"""The feature store's one set of definitions.

Each feature says what it is about (its entity), which events feed it, its window (a half-life for decayed
aggregates), its aggregation and its TTL. Both materializations are derived from these objects and nothing else:
the online one (written by the ingest script into Redis, read by `graph_app.features.online`) and the offline
one (point-in-time rows from the PostgreSQL log, `graph_app.features.offline`). A value older than its TTL is
missing (NaN), never served silently.

Decayed aggregates are exponentially decayed sums: an event of weight w at time t contributes
w * 2^(-(as_of - t) / half_life) at time as_of. Weights are the event types' popularity weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import numpy as np

DAY = 86400.0
HOUR = 3600.0


class Entity(StrEnum):
    USER = "user"
    ITEM = "item"
    USER_ITEM = "user_item"
    USER_ENTITY = "user_entity"
    ITEM_PLACEMENT = "item_placement"


@dataclass(frozen=True)
class FeatureDefinition:
    name: str
    entity: Entity
    description: str
    source: str  # which events (or catalog facts) feed it
    aggregation: str
    half_life_seconds: float | None = None
    ttl_seconds: float | None = None


# Windows of item popularity (half-lives); the ingest script keeps one decayed sorted set per window.
POPULARITY_HALF_LIVES: dict[str, float] = {"1h": HOUR, "1d": DAY, "7d": 7 * DAY}
# User x entity counters (categories, brands, tags...): decayed frequency and last time seen.
AFFINITY_HALF_LIFE_SECONDS = 7 * DAY
AFFINITY_TTL_SECONDS = 90 * DAY
# Impressions and clicks per placement and item, for the click-through rate.
CTR_HALF_LIFE_SECONDS = 7 * DAY
# Beta prior of the click-through rate: CTR = (clicks + a) / (impressions + a + b).
CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_NON_CLICKS = 19.0
# How many of the user's latest items describe their current taste (for similarity).
RECENT_ITEMS_FOR_SIMILARITY = 20

FEATURES: tuple[FeatureDefinition, ...] = (
    FeatureDefinition(
        "user_category_frequency", Entity.USER_ENTITY,
        "How much the user engaged with the candidate's category, decayed.",
        "weighted events of the user on items of that category", "decayed sum",
        AFFINITY_HALF_LIFE_SECONDS, AFFINITY_TTL_SECONDS,
    ),
    FeatureDefinition(
        "user_category_recency_days", Entity.USER_ENTITY,
        "Days since the user last engaged with the candidate's category.",
        "weighted events of the user on items of that category", "as_of - max(time)", None, AFFINITY_TTL_SECONDS,
    ),
    FeatureDefinition(
        "user_item_entity_affinity", Entity.USER_ITEM,
        "The user's decayed engagement with the candidate's other entities (brand, theme, tag...), summed.",
        "weighted events of the user on items sharing an entity", "decayed sum over shared entities",
        AFFINITY_HALF_LIFE_SECONDS, AFFINITY_TTL_SECONDS,
    ),
    FeatureDefinition(
        "item_popularity_1h", Entity.ITEM, "Item popularity, 1 hour half-life.", "weighted events on the item",
        "decayed sum", POPULARITY_HALF_LIVES["1h"], 2 * DAY,
    ),
    FeatureDefinition(
        "item_popularity_1d", Entity.ITEM, "Item popularity, 1 day half-life.", "weighted events on the item",
        "decayed sum", POPULARITY_HALF_LIVES["1d"], 30 * DAY,
    ),
    FeatureDefinition(
        "item_popularity_7d", Entity.ITEM, "Item popularity, 7 day half-life.", "weighted events on the item",
        "decayed sum", POPULARITY_HALF_LIVES["7d"], 90 * DAY,
    ),
    FeatureDefinition(
        "item_trend", Entity.ITEM, "Popularity of the last hour against the day's.",
        "item_popularity_1h and item_popularity_1d", "p1h / (p1d + 1)", None, 2 * DAY,
    ),
    FeatureDefinition("item_age_days", Entity.ITEM, "Days since the item was created.", "catalog", "as_of - created"),
    FeatureDefinition("item_price", Entity.ITEM, "The item's price (missing when unknown).", "catalog", "latest"),
    FeatureDefinition("item_in_stock", Entity.ITEM, "1 when in stock.", "catalog", "latest"),
    FeatureDefinition(
        "user_item_similarity", Entity.USER_ITEM,
        "Cosine between the item's embedding and the mean embedding of the user's recent items.",
        f"the user's last {RECENT_ITEMS_FOR_SIMILARITY} items of interest; embeddings", "cosine",
    ),
    FeatureDefinition(
        "item_placement_ctr", Entity.ITEM_PLACEMENT,
        "Smoothed click-through rate of the item in the placement, decayed.",
        "impressions served and clicks attributed in the placement",
        "(decayed clicks + 1) / (decayed impressions + 20)", CTR_HALF_LIFE_SECONDS,
    ),
)  # fmt: skip

# Retrieval's own outputs, per source: what a candidate scored in the source's list, its share of the list's best
# score and the log of its rank there (missing when the source did not find it). The ranker's strongest signals: the
# serving candidate set carries them (`scoring_app.engine.retrieval`), and training computes them for its offline
# candidates with the same function (`retrieval_features`).
RETRIEVAL_SCORED_SOURCES: tuple[str, ...] = ("user_vector", "similar", "graph", "item_model")
RETRIEVAL_RANKED_SOURCES: tuple[str, ...] = ("popular",)
RETRIEVAL_FEATURES: tuple[FeatureDefinition, ...] = (
    *(
        FeatureDefinition(
            f"retrieval_{source}_{measure}", Entity.USER_ITEM,
            f"The candidate's {description} in the '{source}' retrieval source's list.",
            f"retrieval source '{source}'", aggregation,
        )
        for source in RETRIEVAL_SCORED_SOURCES
        for measure, description, aggregation in (
            ("score", "score", "score"),
            ("share", "score over the list's best score", "score / max(score)"),
            ("log_rank", "log of the rank (0 for the first)", "log(rank)"),
        )
    ),
    *(
        FeatureDefinition(
            f"retrieval_{source}_log_rank", Entity.USER_ITEM,
            f"The log of the candidate's rank in the '{source}' retrieval source's list.",
            f"retrieval source '{source}'", "log(rank)",
        )
        for source in RETRIEVAL_RANKED_SOURCES
    ),
    FeatureDefinition(
        "retrieval_sources", Entity.USER_ITEM, "How many retrieval sources found the candidate.",
        "every retrieval source", "count",
    ),
)  # fmt: skip
FEATURES = FEATURES + RETRIEVAL_FEATURES

FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: index for index, name in enumerate(FEATURE_NAMES)}
RETRIEVAL_FEATURE_NAMES: tuple[str, ...] = tuple(feature.name for feature in RETRIEVAL_FEATURES)
RETRIEVAL_COLUMNS = np.array([FEATURE_INDEX[name] for name in RETRIEVAL_FEATURE_NAMES], dtype=np.int64)


def decay(age_seconds: float, half_life_seconds: float) -> float:
    return float(2.0 ** (-age_seconds / half_life_seconds))


# The formulas serve one row offline and whole numpy columns online: plain arithmetic, the same numbers either way.
Number = TypeVar("Number", float, np.ndarray)


def trend(popularity_1h: Number, popularity_1d: Number) -> Number:
    return popularity_1h / (popularity_1d + 1.0)


def smoothed_ctr(clicks: Number, impressions: Number) -> Number:
    return (clicks + CTR_PRIOR_CLICKS) / (impressions + CTR_PRIOR_CLICKS + CTR_PRIOR_NON_CLICKS)


def retrieval_features(rankings: Mapping[str, Sequence[Sequence[Any]]], item_ids: Sequence[str]) -> np.ndarray:
    """The retrieval features of `item_ids` (rows) in RETRIEVAL_FEATURE_NAMES order, from each source's list
    (item id, score) best first, as the source returned it: online for the served candidate set, offline for
    training's candidates. An item listed twice by a source keeps its first (best) place."""
    index = {item_id: row for row, item_id in enumerate(item_ids)}
    values = np.full((len(item_ids), len(RETRIEVAL_FEATURES)), np.nan)
    found = np.zeros(len(item_ids))
    column = 0
    for source in (*RETRIEVAL_SCORED_SOURCES, *RETRIEVAL_RANKED_SOURCES):
        listed = rankings.get(source) or ()
        scored = source in RETRIEVAL_SCORED_SOURCES
        rows = np.full(len(listed), -1, dtype=np.int64)
        for position, entry in enumerate(listed):
            rows[position] = index.get(entry[0], -1)
        kept = np.flatnonzero(rows >= 0)
        # First occurrences only (np.unique returns the first index of each row).
        _, first = np.unique(rows[kept], return_index=True)
        kept = kept[first]
        targets = rows[kept]
        found[targets] += 1
        if scored:
            scores = np.array([float(entry[1]) for entry in listed])
            best = float(scores.max()) if len(scores) else 0.0
            values[targets, column] = scores[kept]
            values[targets, column + 1] = scores[kept] / best if best > 0 else 0.0
            values[targets, column + 2] = np.log1p(kept)  # log(rank), rank = position + 1
            column += 3
        else:
            values[targets, column] = np.log1p(kept)
            column += 1
    values[:, column] = found
    return values
