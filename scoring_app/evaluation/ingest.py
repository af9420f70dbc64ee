"""MovieLens into the platform through its own services: movies become catalog items (`item_upsert`), users
shoppers with their traits, ratings events of the durable log (`event_validate`, then `event_log_append`).

Every rating becomes one `purchase` event (the user watched the film: the strongest, completed interaction),
with the rating in its context; the protocol counts every rating as relevant, whatever its value. The events are
replayed as if received live (`received_at` = `occurred_at`), as the feature store only counts events that
reached the platform within the 48 h dedupe window of happening.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
from django.db import connection

from graph_app.models import Shopper
from graph_app.services import EntityRef, ItemInput, content_projection, item_upsert
from scoring_app.evaluation.movielens import Movie, MovieLensData
from scoring_app.evaluation.scratch import scratch_database_required
from signals_app.log import event_log_append, event_log_partition_months, event_log_partitions_create, month_start
from signals_app.records import EventRecord
from signals_app.validation import EventInput, event_validate

RATING_EVENT_TYPE = "purchase"
EVENT_BATCH_SIZE = 5000
_SLUG = re.compile(r"[^a-z0-9]+")


class IngestError(Exception):
    """Some MovieLens rows were refused by the platform's validation."""


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
    for movie in data.movies.values():
        item_upsert(data=movie_item_input(movie), projection=projection)
    Shopper.objects.bulk_create(
        [Shopper(external_id=user_key(user_id), traits=traits) for user_id, traits in sorted(data.users.items())],
        ignore_conflicts=True,
    )
    return len(data.movies)


def _records(ratings: np.ndarray, now: datetime) -> list[EventRecord]:
    records = []
    for user_id, movie_id, rating, timestamp in ratings.tolist():
        raw = {
            "event_id": f"rating-{user_id}-{movie_id}-{timestamp}",
            "type": RATING_EVENT_TYPE,
            "user_id": user_key(user_id),
            "item_id": movie_item_id(movie_id),
            "timestamp": timestamp,
            "context": {"rating": rating},
        }
        event = event_validate(raw, now=now)
        if not isinstance(event, EventInput):
            raise IngestError(f"rating {raw['event_id']} refused: {event}")
        # Replayed as received live: the feature store drops events that arrived long after they happened.
        records.append(EventRecord(event=event, received_at=event.occurred_at))
    return records


def events_replace(*, ratings: np.ndarray) -> int:
    """Make the scratch log hold exactly these ratings (rows of user, movie, rating, Unix seconds); the count."""
    scratch_database_required()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE signals_app_event, signals_app_eventid")
        # Vectors of the previous run's users would otherwise linger for users absent from this log.
        cursor.execute("UPDATE graph_app_shopper SET embedding = NULL")
    records = _records(ratings, datetime.now(UTC))
    months = {month_start(record.event.occurred_at) for record in records} - event_log_partition_months()
    event_log_partitions_create(months=months)
    known_users: set[str] = set()
    stored = 0
    for start in range(0, len(records), EVENT_BATCH_SIZE):
        stored += len(event_log_append(records=records[start : start + EVENT_BATCH_SIZE], known_user_ids=known_users))
    return stored
