"""Reads of the event and impression logs for the control plane: the console's placement KPIs, and the users and
histories the skew checks sample."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from django.db.models import Exists, Min, OuterRef, QuerySet

from graph_app.models import FeatureRow
from graph_app.state.models import Event, Impression
from personalization.db_router import read_connection

_PLACEMENT_DAYS_SQL = """
WITH shown AS (
    SELECT placement, date_trunc('day', served_at AT TIME ZONE 'UTC')::date AS day, count(*) AS impressions
    FROM signals_app_impression
    WHERE served_at >= %(start)s AND served_at < %(end)s
    GROUP BY 1, 2
), answered AS (
    SELECT i.placement, date_trunc('day', i.served_at AT TIME ZONE 'UTC')::date AS day,
        count(DISTINCT i.id) FILTER (WHERE e.type = 'click') AS clicks,
        count(DISTINCT i.id) FILTER (WHERE e.type = 'add_to_cart') AS add_to_carts,
        count(DISTINCT i.id) FILTER (WHERE e.type = 'purchase') AS purchases,
        coalesce(sum(coalesce(e.value, item.price::float8)) FILTER (WHERE e.type = 'purchase'), 0) AS revenue
    FROM signals_app_event e
    JOIN signals_app_impression i ON i.request_id = e.request_id AND i.slot = e.attributed_slot
    LEFT JOIN graph_app_item item ON item.external_id = e.item_id AND e.type = 'purchase' AND e.value IS NULL
    WHERE e.attributed_slot IS NOT NULL AND e.occurred_at >= %(events_from)s AND e.type = ANY(%(types)s)
        AND i.served_at >= %(start)s AND i.served_at < %(end)s
    GROUP BY 1, 2
)
SELECT s.placement, s.day, s.impressions, coalesce(a.clicks, 0), coalesce(a.add_to_carts, 0),
    coalesce(a.purchases, 0), coalesce(a.revenue, 0)
FROM shown s LEFT JOIN answered a ON a.placement = s.placement AND a.day = s.day
ORDER BY s.day, s.placement
"""


@dataclass(frozen=True)
class PlacementDayOutcomes:
    """A placement's impressions served on one UTC day and how many of them were clicked, added to a cart, bought
    (attributed events), with the purchases' revenue."""

    placement: str
    day: date
    impressions: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float


def placement_day_outcomes(
    *, start: datetime, end: datetime, events_from: datetime, outcome_types: Sequence[str]
) -> list[PlacementDayOutcomes]:
    """Per placement and UTC day of impressions served in [start, end), in one SQL round trip: served by
    `impression_served_time` (the window's impressions), `event_attributed_time` (the attributed events since
    `events_from`, a partial index) and `impression_unique_slot` (an event's impression)."""
    params: dict[str, Any] = {"start": start, "end": end, "events_from": events_from, "types": list(outcome_types)}
    with read_connection().cursor() as cursor:
        cursor.execute(_PLACEMENT_DAYS_SQL, params)
        return [
            PlacementDayOutcomes(placement, day, impressions, clicks, add_to_carts, purchases, float(revenue))
            for placement, day, impressions, clicks, add_to_carts, purchases, revenue in cursor.fetchall()
        ]


def logged_users_sample(*, users: int, seed: str) -> list[str]:
    """Up to `users` user ids of the event log, in an order the seed fixes."""
    with read_connection().cursor() as cursor:
        cursor.execute(
            "SELECT user_id FROM (SELECT DISTINCT user_id FROM signals_app_event WHERE user_id <> '') u "
            "ORDER BY md5(user_id || %s) LIMIT %s",
            [seed, users],
        )
        return [row[0] for row in cursor.fetchall()]


def user_items_logged(*, user_id: str, limit: int, types: Sequence[str] | None = None) -> list[str]:
    """The user's latest distinct items in the log (of these event types, or any), newest first."""
    with read_connection().cursor() as cursor:
        if types is None:
            cursor.execute(
                "SELECT item_id FROM signals_app_event WHERE user_id = %s AND item_id <> '' "
                "GROUP BY item_id ORDER BY max(occurred_at) DESC LIMIT %s",
                [user_id, limit],
            )
        else:
            cursor.execute(
                "SELECT item_id FROM signals_app_event WHERE user_id = %s AND item_id <> '' AND type = ANY(%s) "
                "GROUP BY item_id ORDER BY max(occurred_at) DESC, item_id LIMIT %s",
                [user_id, list(types), limit],
            )
        return [row[0] for row in cursor.fetchall()]


def user_purchases_logged(*, user_id: str) -> set[str]:
    with read_connection().cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT item_id FROM signals_app_event WHERE user_id = %s AND type = 'purchase' ORDER BY 1",
            [user_id],
        )
        return {row[0] for row in cursor.fetchall()}


# Graph's own readers of the logs: training's user-item pairs, the neighbourhoods' co-occurrences, the feature
# store's offline materialization (its series reads stream the rows: `graph_app.features.offline`).


def interaction_weights_sql(*, weights: Mapping[str, float]) -> tuple[str, list[object]]:
    """The query of the log's user-item pairs (events of these types, weighted): user (bytewise order, as Python
    sorts), the item's row id in the catalog, summed weight, latest event (Unix seconds), whether a purchase is among
    them; for the caller to run in its own statement (training copies it into a temporary table)."""
    sql = """
        SELECT e.user_id COLLATE "C" AS user_id, i.id AS item, sum(w.weight) AS weight,
               extract(epoch FROM max(e.occurred_at))::float8 AS latest, bool_or(e.type = 'purchase') AS purchased
        FROM signals_app_event e
        JOIN unnest(%s::text[], %s::float8[]) AS w(type, weight) ON w.type = e.type
        JOIN graph_app_item i ON i.external_id = e.item_id
        WHERE e.user_id <> '' AND e.item_id <> ''
        GROUP BY 1, 2
    """
    return sql, [list(weights), list(weights.values())]


_ITEM_USERS_SQL = """
SELECT e.user_id, array_agg(DISTINCT i.external_id)
FROM signals_app_event e
JOIN graph_app_item i ON i.external_id = e.item_id
WHERE e.user_id <> '' AND e.type = ANY(%(types)s) AND e.occurred_at > %(since)s AND e.occurred_at <= %(now)s
GROUP BY e.user_id
"""


def user_items_in_window(*, types: Sequence[str], since: datetime, now: datetime) -> list[tuple[str, list[str]]]:
    """(user id, the catalog items they had events of these types with in (since, now]), a row per user."""
    with read_connection().cursor() as cursor:
        cursor.execute(_ITEM_USERS_SQL, {"types": list(types), "since": since, "now": now})
        rows: list[tuple[str, list[str]]] = cursor.fetchall()
        return rows


_USER_EVENTS_SQL = """
SELECT user_id, item_id, type, extract(epoch FROM occurred_at)::float8
FROM signals_app_event
WHERE user_id = ANY(%(users)s) AND item_id <> '' AND occurred_at <= %(until)s
ORDER BY occurred_at, id
"""


def user_events_logged(*, users: Sequence[str], until: datetime) -> list[tuple[str, str, str, float]]:
    """(user id, item id, type, Unix time) of these users' item events up to `until`, in log order."""
    with read_connection().cursor() as cursor:
        cursor.execute(_USER_EVENTS_SQL, {"users": list(users), "until": until})
        rows: list[tuple[str, str, str, float]] = cursor.fetchall()
        return rows


# Each series' events by series number then time, read once per call: `decayed_sums` computes every instant's sums
# from them. An item's weighted events and its clicks in the placements asked for (the placement's number, 0 for
# none) come from one read: a separate read of the clicks scanned every event of the items again (85 s a candidate
# set at a million items). The last column numbers the hidden pair an event belongs to (from 1; 0: none), so that
# several sets of rows, each hiding its own pairs, share the read.
ITEM_EVENTS_SERIES_SQL = """
WITH r AS (SELECT * FROM unnest(%(series)s::text[]) WITH ORDINALITY AS r(item, idx)),
     w AS (SELECT * FROM unnest(%(types)s::text[], %(weights)s::float8[]) AS w(type, weight)),
     h AS (SELECT * FROM unnest(%(hidden_users)s::text[], %(hidden_items)s::text[]) WITH ORDINALITY
           AS h(user_id, item_id, idx))
SELECT r.idx - 1, (extract(epoch FROM e.occurred_at) * 1000000)::int8, coalesce(w.weight, 0.0),
       CASE WHEN e.type = 'click' THEN coalesce(array_position(%(placements)s::text[], e.placement::text), 0)
            ELSE 0 END,
       coalesce(h.idx, 0)
FROM r
JOIN signals_app_event e ON e.item_id = r.item AND e.occurred_at <= %(until)s
LEFT JOIN w ON w.type = e.type
LEFT JOIN h ON h.user_id = e.user_id AND h.item_id = e.item_id
WHERE (w.weight IS NOT NULL OR e.type = 'click')
ORDER BY r.idx, e.occurred_at, e.id
"""

# Each (item, placement) series' impressions by series number then time.
PLACEMENT_IMPRESSIONS_SERIES_SQL = """
WITH r AS (SELECT * FROM unnest(%(series)s::text[], %(placements)s::text[]) WITH ORDINALITY AS r(item, placement, idx))
SELECT r.idx - 1, (extract(epoch FROM i.served_at) * 1000000)::int8, 1.0::float8
FROM r
JOIN signals_app_impression i ON i.item_id = r.item AND i.placement = r.placement AND i.served_at <= %(until)s
ORDER BY r.idx, i.served_at, i.id
"""


def impressions_oldest() -> datetime | None:
    """When the oldest impression the log keeps was served."""
    oldest: datetime | None = Impression.objects.aggregate(oldest=Min("served_at"))["oldest"]
    return oldest


def slice_reactions(
    start: datetime, end: datetime, label_window: timedelta, *, reactions: Sequence[str], clock_skew: timedelta
) -> QuerySet[Event, tuple[str, str, str]]:
    """(request id, item id, type) of the reactions attributed to slates served in [start, end) within their label
    window: read from the log's partial index of attributed events (`event_attributed_time`), not the whole log."""
    return (
        Event.objects.filter(
            attributed_slot__isnull=False,
            occurred_at__gte=start - clock_skew,
            occurred_at__lt=end + label_window,
            type__in=list(reactions),
        )
        .order_by()
        .values_list("request_id", "item_id", "type")
    )


def impressions_without_feature_rows(
    *, request_ids: Collection[str], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The impressions of these slates served in [start, end) that have no feature row yet, in serving order."""
    done = FeatureRow.objects.filter(request_id=OuterRef("request_id"), slot=OuterRef("slot"))
    return cast(
        list[dict[str, Any]],
        list(
            Impression.objects.filter(request_id__in=request_ids, served_at__gte=start, served_at__lt=end)
            .exclude(Exists(done))
            .order_by("served_at", "request_id", "slot")
            .values("request_id", "slot", "user_key", "item_id", "placement", "served_at", "model_version")
        ),
    )
