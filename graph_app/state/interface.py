"""What other apps may use of the online state and the logs: frozen dataclasses and keyword-only functions.

Signal validates events and asks this module to apply them (`events_ingest_online`), to store and apply what the
stream brought (`event_log_append`, `events_apply_online`, `impressions_store`), to merge an identified session
(`session_state_merge`) and to rebuild the online state from the log, handing in its identity links
(`online_state_rebuild`); Score reads popularity on its own pipeline (`popular_items_queue`); Surface logs
impressions (`impression_log_call`, `impression_log_queue`), reads and keeps the shopper's experiment assignment
unit on its own pipelines (`assignment_unit_queue`, `assignment_unit_keep_queue`) and reads an experiment's
outcomes (`experiment_outcomes`); off-policy evaluation reads the ranker's logged slates (`ranker_slates_logged`).
Nothing else reads or writes these keys and tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import redis

from graph_app.state.assignment_unit import (
    ASSIGNMENT_UNIT_TTL_SECONDS,
    assignment_unit_decode,
    assignment_unit_keep_queue,
    assignment_unit_queue,
)
from graph_app.state.bandit_log import (
    bandit_costs_record,
    bandit_decisions_prune,
    bandit_decisions_read,
    bandit_impressions_pending,
    bandit_reactions,
    bandit_slots_picked,
)
from graph_app.state.counters import CountersReport, item_counters_rebuild
from graph_app.state.custom_types import event_types
from graph_app.state.event_types import BUILT_IN_EVENT_TYPES, EventType, event_type_lookup
from graph_app.state.experiment_reads import (
    PRE_EXPOSURE_DAYS,
    ExperimentDay,
    ExperimentVariantOutcomes,
    experiment_outcomes,
)
from graph_app.state.history import event_is_late, events_apply_online
from graph_app.state.identity import SessionMerge, session_state_merge
from graph_app.state.impression_log import impression_slates_logged, impressions_store
from graph_app.state.impressions import (
    IMPRESSION_LOG_LUA_FILES,
    ImpressionLogCall,
    impression_log_call,
    impression_log_queue,
    impression_log_script,
)
from graph_app.state.ingest import (
    COOLDOWN_EVENT_TYPES,
    COOLDOWN_ITEMS_KEPT,
    COOLDOWN_KEPT_SECONDS,
    DEDUPE_WINDOW,
    RECENT_ITEMS_KEPT,
    RECENT_ITEMS_TTL_SECONDS,
    EventOutcome,
    OnlineEvent,
    ingest_script,
)
from graph_app.state.log import (
    event_log_append,
    event_log_partition_months,
    event_log_partitions_create,
    event_log_partitions_ensure,
    impression_log_maintain,
    month_start,
)
from graph_app.state.log_erasure import ShopperLogsErased, ShopperLogTrace, shopper_log_trace, shopper_logs_erase
from graph_app.state.log_reads import (
    PlacementDayOutcomes,
    logged_users_sample,
    placement_day_outcomes,
    user_items_logged,
    user_purchases_logged,
)
from graph_app.state.online_erasure import user_state_erase, user_state_keys
from graph_app.state.popularity import PopularityReport, popularity_refresh
from graph_app.state.ranker_log import REWARD_EVENT_TYPES, RankerSlateLogged, ranker_slates_logged
from graph_app.state.reads import (
    PopularRead,
    affinity_queue,
    cooldown_key,
    cooldown_queue,
    popular_items_queue,
    purchased_queue,
    recent_items_queue,
)
from graph_app.state.rebuild import OnlineStateRebuildReport, online_state_rebuild
from graph_app.state.records import Attribution, EventInput, EventRecord
from personalization.redis_client import ReplicasWait

__all__ = [
    "ASSIGNMENT_UNIT_TTL_SECONDS",
    "BUILT_IN_EVENT_TYPES",
    "COOLDOWN_EVENT_TYPES",
    "COOLDOWN_ITEMS_KEPT",
    "COOLDOWN_KEPT_SECONDS",
    "DEDUPE_WINDOW",
    "IMPRESSION_LOG_LUA_FILES",
    "PRE_EXPOSURE_DAYS",
    "RECENT_ITEMS_KEPT",
    "RECENT_ITEMS_TTL_SECONDS",
    "REWARD_EVENT_TYPES",
    "Attribution",
    "CountersReport",
    "EventInput",
    "EventOutcome",
    "EventRecord",
    "EventType",
    "ExperimentDay",
    "ExperimentVariantOutcomes",
    "ImpressionLogCall",
    "OnlineEvent",
    "OnlineStateRebuildReport",
    "PlacementDayOutcomes",
    "PopularRead",
    "PopularityReport",
    "RankerSlateLogged",
    "SessionMerge",
    "ShopperLogTrace",
    "ShopperLogsErased",
    "affinity_queue",
    "assignment_unit_decode",
    "assignment_unit_keep_queue",
    "assignment_unit_queue",
    "bandit_costs_record",
    "bandit_decisions_prune",
    "bandit_decisions_read",
    "bandit_impressions_pending",
    "bandit_reactions",
    "bandit_slots_picked",
    "cooldown_key",
    "cooldown_queue",
    "event_is_late",
    "event_log_append",
    "event_log_partition_months",
    "event_log_partitions_create",
    "event_log_partitions_ensure",
    "event_type_lookup",
    "event_types",
    "events_apply_online",
    "events_ingest_online",
    "experiment_outcomes",
    "impression_log_call",
    "impression_log_maintain",
    "impression_log_queue",
    "impression_log_script",
    "impression_slates_logged",
    "impressions_store",
    "item_counters_rebuild",
    "logged_users_sample",
    "month_start",
    "online_state_rebuild",
    "placement_day_outcomes",
    "popular_items_queue",
    "popularity_refresh",
    "purchased_queue",
    "ranker_slates_logged",
    "recent_items_queue",
    "session_state_merge",
    "shopper_log_trace",
    "shopper_logs_erase",
    "user_items_logged",
    "user_purchases_logged",
    "user_state_erase",
    "user_state_keys",
]


def events_ingest_online(
    *,
    client: redis.Redis,
    events: Sequence[OnlineEvent],
    also: Callable[[redis.client.Pipeline], None] | None = None,
    replicas_wait: ReplicasWait | None = None,
) -> list[EventOutcome]:
    """Apply validated events to the online state and append them to the stream, in one round trip: each event's
    outcome. `also` queues more commands on the same pipeline (their replies are ignored); `replicas_wait` waits
    there for the replicas of the masters written to (a Redis Cluster)."""
    return ingest_script.run(client, events, also, replicas_wait)
