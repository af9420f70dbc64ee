"""MovieLens into the platform through its own services: movies become catalog items (`items_upsert_many`), users
shoppers with their traits, ratings events as a storefront posts them (`rating_events`, for `events_ingest`).

Every rating becomes one `purchase` event (the user watched the film: the strongest, completed interaction),
with the rating in its context; the protocol counts every rating as relevant, whatever its value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np

from graph_app.interface import (
    ITEM_BATCH_MAX,
    EntityRef,
    ItemInput,
    content_projection,
    items_upsert_many,
    shoppers_create,
)
from operations.evaluation.movielens import Movie, MovieLensData

RATING_EVENT_TYPE = "purchase"
_SLUG = re.compile(r"[^a-z0-9]+")


def movie_item_id(movie_id: int) -> str:
    return f"movie-{movie_id}"


def user_key(user_id: int) -> str:
    return f"user-{user_id}"


def _slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-") or "unknown"


def movie_item_input(movie: Movie) -> ItemInput:
    """A film as a catalog item: its first genre is the category, every genre and the release decade are
    knowledge-graph entities (affinities and neighbourhoods use them), the release date an attribute."""
    entities = [EntityRef(kind="genre", external_id=_slug(genre), name=genre) for genre in movie.genres]
    attributes: dict[str, object] = {}
    if movie.release_date is not None:
        year = movie.release_date.year
        decade = year // 10 * 10
        entities.append(EntityRef(kind="decade", external_id=f"{decade}s", name=f"The {decade}s"))
        attributes = {"release_year": year, "release_date": movie.release_date.date().isoformat()}
    return ItemInput(
        external_id=movie_item_id(movie.movie_id),
        title=movie.title,
        category=movie.genres[0] if movie.genres else "",
        attributes=attributes,
        entities=tuple(entities),
    )


def catalog_load(*, data: MovieLensData) -> int:
    """Every movie as an item, every user of u.user as a shopper with its traits; the number of items."""
    projection = content_projection()
    inputs = [movie_item_input(movie) for movie in data.movies.values()]
    for start in range(0, len(inputs), ITEM_BATCH_MAX):
        items_upsert_many(rows=inputs[start : start + ITEM_BATCH_MAX], projection=projection)
    shoppers_create(traits_by_user={user_key(user_id): traits for user_id, traits in sorted(data.users.items())})
    return len(data.movies)


def rating_events(ratings: np.ndarray, *, end: datetime) -> list[dict[str, object]]:
    """One `purchase` event per rating (rows of user, movie, rating, Unix seconds), as a storefront would post it,
    with every timestamp moved by the same amount so that the latest one is `end`; in time order."""
    if not len(ratings):
        return []
    shift = end.timestamp() - float(ratings[:, 3].max())
    order = np.lexsort((ratings[:, 1], ratings[:, 0], ratings[:, 3]))
    return [
        {
            "event_id": f"rating-{user_id}-{movie_id}-{timestamp}",
            "type": RATING_EVENT_TYPE,
            "user_id": user_key(user_id),
            "item_id": movie_item_id(movie_id),
            "timestamp": datetime.fromtimestamp(timestamp + shift, UTC).isoformat(),
            "context": {"rating": rating},
        }
        for user_id, movie_id, rating, timestamp in ratings[order].tolist()
    ]
