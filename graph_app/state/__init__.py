"""The online state and the logs it is rebuilt from: one owner. Other apps import `graph_app.state.interface` only.

Redis (`personalization.redis_keys`), written by Lua beside this file: the ingest script (`ingest.lua`, Signal's
events) and the apply script (`apply.lua`, late and imported events: `history`), both over `state.lua`; the identity
merge (`affinity_merge.lua`, `identity`); the impression log (`impressions.lua`, Surface's slates; the caps' script
composes `impression_log.lua`); erasure (`online_erase.lua`). Per partition: the event stream (appended by the
ingest script; Signal's consumer, whose job is to append events to the durable log, reads and acknowledges it in its
own consumer group and keeps its dead letters), the dedupe sets and layout (`dedupe`), the item counters, the
placement counters (click-through rate), the popularity windows and their epochs; per user key: the recent items,
session items, affinity hash, cool-down and purchased sets. Read by `reads` (popular items, for Score's retrieval)
and by the feature store (`graph_app.features.online`); Score reads the recent items and affinity hash, Surface's
caps the cool-down and its slates the purchased set.

PostgreSQL (`models`, tables named `signals_app_*` as before the move): the event log and its idempotency keys
(`log`), the impression log and the bandit's decisions (`impression_log`, `bandit_log`), custom event types
(`event_types`, `custom_types`). Written from the stream by Signal's consumer through the interface; read by the
bandit's learning (`bandit_log`), the console and the skew checks (`log_reads`), erasure (`log_erasure`),
popularity (`popularity`), and Graph's training, neighbourhoods and materialization.
"""
