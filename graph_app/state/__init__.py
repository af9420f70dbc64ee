"""The online state and the logs it is rebuilt from: one owner. Other apps import `graph_app.state.interface` only.

Redis (`personalization.redis_keys`), written by the ingest script (`ingest`, Signal's events) and the apply script
(late and imported events, `history`), the identity merge (`identity`) and the impression log (`impressions`,
Surface's slates): per partition the event stream, the dedupe sets and layout (`dedupe`), the item counters, the
placement counters (click-through rate), the popularity windows and their epochs; per user key the recent items,
session items, affinity hash, cool-down and purchased sets. Read by `reads` (popular items, Score's retrieval)
and by the feature store (`graph_app.features.online`); caps and slates read the cool-down and purchased sets.

PostgreSQL (`models`, tables named `signals_app_*` as before the move): the event log and its idempotency keys
(`log`), the impression log and the bandit's decisions (`impression_log`, `bandit_log`), custom event types
(`event_types`, `custom_types`). Written from the stream by Signal's consumer through the interface; read by
training, materialization, popularity (`popularity`) and the bandit's learning.
"""
