"""An experiment's outcomes from the impression and event logs, aggregated in PostgreSQL in one round trip: per
variant, every shopper's totals (the unit the statistics cluster on) with their activity before first exposure
(CUPED's covariate), a daily series, and the serving guardrails over its slates.

The definitions are the console dashboard's (`rules_admin.dashboard_selectors`): an impression is clicked, added to
a cart or bought when an event carrying its slate's `request_id` was attributed to its slot; revenue is the
attributed purchases' `value` (the item's catalog price when sent without one). A shopper is the assignment unit
the impression's variant was drawn by (`experiment_unit`: an anonymous session keeps its unit after identify, so a
shopper who signs in mid-experiment counts once; rows logged without one count their `user_key`), and their
pre-exposure events are those logged under that key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from django.db import transaction

from personalization.db_router import lag_tolerant_reads, read_connection

# Attributed events may carry a client timestamp a little before the slate was logged as served.
EVENT_CLOCK_SLACK = timedelta(days=1)
# How far back a shopper's activity counts as pre-exposure (CUPED): two weeks covers a weekly cycle twice.
PRE_EXPOSURE_DAYS = 14

# One scan of the experiment's impressions (`impression_experiment`, a partial index), folded into its slates at
# once (a slate's rows share its shopper, variant, serving time and build time), so every later step handles a
# fifth of the rows. The attributed events join their slate by `request_id`: the consumer sets `attributed_slot`
# only to a slot of the logged slate, so counting distinct slots per slate counts its clicked impressions as the
# dashboard's join on (request_id, slot) does. Per-shopper totals are aggregated into one array per variant (the
# arrays of one aggregate node see the rows in the same order, so index i is one shopper throughout).
_RESULTS_SQL = """
WITH slates AS MATERIALIZED (
    SELECT request_id, coalesce(nullif(experiment_unit, ''), user_key) AS user_key, experiment_variant AS variant,
        count(*) AS impressions, min(served_at) AS served_at, max(serving_ms) AS serving_ms,
        bool_or(degraded) AS degraded
    FROM signals_app_impression
    WHERE experiment_id = %(experiment)s AND served_at >= %(served_from)s
    GROUP BY 1, 2, 3
), answered AS (
    SELECT e.request_id,
        count(DISTINCT e.attributed_slot) FILTER (WHERE e.type = 'click') AS clicks,
        count(DISTINCT e.attributed_slot) FILTER (WHERE e.type = 'add_to_cart') AS add_to_carts,
        count(DISTINCT e.attributed_slot) FILTER (WHERE e.type = 'purchase') AS purchases,
        coalesce(sum(coalesce(e.value, item.price::float8)) FILTER (WHERE e.type = 'purchase'), 0) AS revenue
    FROM signals_app_event e
    LEFT JOIN graph_app_item item ON item.external_id = e.item_id AND e.type = 'purchase' AND e.value IS NULL
    WHERE e.attributed_slot IS NOT NULL AND e.occurred_at >= %(events_from)s
        AND e.type IN ('click', 'add_to_cart', 'purchase') AND e.request_id IN (SELECT request_id FROM slates)
    GROUP BY e.request_id
), outcomes AS MATERIALIZED (
    SELECT s.variant, s.user_key, s.served_at, s.impressions, s.serving_ms, s.degraded,
        coalesce(a.clicks, 0) AS clicks, coalesce(a.add_to_carts, 0) AS add_to_carts,
        coalesce(a.purchases, 0) AS purchases, coalesce(a.revenue, 0) AS revenue
    FROM slates s LEFT JOIN answered a ON a.request_id = s.request_id
), shoppers AS MATERIALIZED (
    SELECT variant, user_key, sum(impressions) AS impressions, sum(clicks) AS clicks,
        sum(add_to_carts) AS add_to_carts, sum(purchases) AS purchases, sum(revenue) AS revenue,
        min(served_at) AS first_seen
    FROM outcomes GROUP BY 1, 2
), before AS (
    SELECT p.variant, p.user_key,
        count(*) FILTER (WHERE e.type = 'click') AS clicks,
        count(*) FILTER (WHERE e.type = 'add_to_cart') AS add_to_carts,
        count(*) FILTER (WHERE e.type = 'purchase') AS purchases,
        coalesce(sum(e.value) FILTER (WHERE e.type = 'purchase'), 0) AS revenue
    FROM signals_app_event e
    JOIN shoppers p ON p.user_key = CASE WHEN e.user_id <> '' THEN e.user_id ELSE 'session:' || e.session_id END
        AND e.occurred_at >= p.first_seen - %(pre_exposure)s AND e.occurred_at < p.first_seen
    WHERE e.type IN ('click', 'add_to_cart', 'purchase') AND e.occurred_at >= %(served_from)s - %(pre_exposure)s
    GROUP BY 1, 2
), by_variant AS (
    SELECT p.variant, array_agg(p.impressions::int8) AS impressions, array_agg(p.clicks::int8) AS clicks,
        array_agg(p.add_to_carts::int8) AS add_to_carts, array_agg(p.purchases::int8) AS purchases,
        array_agg(p.revenue) AS revenue, array_agg(coalesce(b.clicks, 0)) AS pre_clicks,
        array_agg(coalesce(b.add_to_carts, 0)) AS pre_add_to_carts,
        array_agg(coalesce(b.purchases, 0)) AS pre_purchases, array_agg(coalesce(b.revenue, 0)) AS pre_revenue
    FROM shoppers p LEFT JOIN before b ON b.variant = p.variant AND b.user_key = p.user_key
    GROUP BY 1
), days AS (
    SELECT variant, json_agg(json_build_array(day, impressions, clicks, add_to_carts, purchases, revenue)
                             ORDER BY day) AS days
    FROM (
        SELECT variant, date_trunc('day', served_at AT TIME ZONE 'UTC')::date AS day, sum(impressions) AS impressions,
            sum(clicks) AS clicks, sum(add_to_carts) AS add_to_carts, sum(purchases) AS purchases,
            sum(revenue) AS revenue
        FROM outcomes GROUP BY 1, 2
    ) daily
    GROUP BY 1
), guardrails AS (
    SELECT variant, count(*) AS slates, percentile_cont(0.99) WITHIN GROUP (ORDER BY serving_ms) AS p99_ms,
        avg(degraded::int)::float8 AS degraded_rate
    FROM outcomes GROUP BY 1
)
SELECT v.variant, v.impressions, v.clicks, v.add_to_carts, v.purchases, v.revenue, v.pre_clicks,
    v.pre_add_to_carts, v.pre_purchases, v.pre_revenue, d.days, g.slates, g.p99_ms, g.degraded_rate
FROM by_variant v JOIN days d ON d.variant = v.variant JOIN guardrails g ON g.variant = v.variant
ORDER BY v.variant
"""
# The query's sorts and hashes hold a few hundred thousand slates and shoppers: in memory, not on disk. Its CTEs'
# row counts are guessed low (by 4 to 30 times), and then PostgreSQL sorts 600k events on the shopper key for merge
# joins: hash joins took 3.4 s where merge joins took 8.9 s at 1 M impressions (BENCHMARKS.md, issue 22).
_RESULTS_SETTINGS = ("SET LOCAL work_mem = '128MB'", "SET LOCAL enable_mergejoin = off")


@dataclass(frozen=True)
class ExperimentDay:
    """One variant's impressions served on one UTC day and their attributed outcomes."""

    day: date
    impressions: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float


@dataclass(frozen=True)
class ExperimentVariantOutcomes:
    """One variant of an experiment, as logged. The per-shopper lists are aligned (index i: one shopper) and hold
    the shopper's totals over the experiment; `pre_*` are the same shopper's events of each kind (any placement,
    attributed or not; purchases' sent `value`) in the PRE_EXPOSURE_DAYS before their first impression in it."""

    variant: str
    impressions: list[int]
    clicks: list[int]
    add_to_carts: list[int]
    purchases: list[int]
    revenue: list[float]
    pre_clicks: list[int]
    pre_add_to_carts: list[int]
    pre_purchases: list[int]
    pre_revenue: list[float]
    days: list[ExperimentDay]
    slates: int
    p99_serving_ms: float | None  # over its slates; None when none recorded a build time
    degraded_rate: float


def _day(row: list[Any]) -> ExperimentDay:
    day, impressions, clicks, add_to_carts, purchases, revenue = row
    return ExperimentDay(date.fromisoformat(day), impressions, clicks, add_to_carts, purchases, float(revenue))


@lag_tolerant_reads()
def experiment_outcomes(*, experiment_id: int, served_from: datetime) -> list[ExperimentVariantOutcomes]:
    """Every variant with impressions of the experiment served since `served_from` (its start: the bound lets
    PostgreSQL skip the daily partitions before it), by variant name, in one SQL round trip."""
    params: dict[str, Any] = {
        "experiment": experiment_id,
        "served_from": served_from,
        "events_from": served_from - EVENT_CLOCK_SLACK,
        "pre_exposure": timedelta(days=PRE_EXPOSURE_DAYS),
    }
    connection = read_connection()  # chosen before the transaction: a read inside one on the primary stays there
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for setting in _RESULTS_SETTINGS:
            cursor.execute(setting)
        cursor.execute(_RESULTS_SQL, params)
        rows = cursor.fetchall()
    return [
        ExperimentVariantOutcomes(
            variant=row[0],
            impressions=row[1],
            clicks=row[2],
            add_to_carts=row[3],
            purchases=row[4],
            revenue=row[5],
            pre_clicks=row[6],
            pre_add_to_carts=row[7],
            pre_purchases=row[8],
            pre_revenue=row[9],
            days=[_day(day) for day in (orjson.loads(row[10]) if isinstance(row[10], (str, bytes)) else row[10])],
            slates=row[11],
            p99_serving_ms=None if row[12] is None else float(row[12]),
            degraded_rate=float(row[13]),
        )
        for row in rows
    ]
