"""Reads of the event and impression logs for the control plane: the console's placement KPIs, and the users and
histories the skew checks sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from django.db import connection

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
    with connection.cursor() as cursor:
        cursor.execute(_PLACEMENT_DAYS_SQL, params)
        return [
            PlacementDayOutcomes(placement, day, impressions, clicks, add_to_carts, purchases, float(revenue))
            for placement, day, impressions, clicks, add_to_carts, purchases, revenue in cursor.fetchall()
        ]


def logged_users_sample(*, users: int, seed: str) -> list[str]:
    """Up to `users` user ids of the event log, in an order the seed fixes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT user_id FROM (SELECT DISTINCT user_id FROM signals_app_event WHERE user_id <> '') u "
            "ORDER BY md5(user_id || %s) LIMIT %s",
            [seed, users],
        )
        return [row[0] for row in cursor.fetchall()]


def user_items_logged(*, user_id: str, limit: int, types: Sequence[str] | None = None) -> list[str]:
    """The user's latest distinct items in the log (of these event types, or any), newest first."""
    with connection.cursor() as cursor:
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
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT item_id FROM signals_app_event WHERE user_id = %s AND type = 'purchase' ORDER BY 1",
            [user_id],
        )
        return {row[0] for row in cursor.fetchall()}
