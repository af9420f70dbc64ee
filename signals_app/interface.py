"""What other apps may use of Signal (Sentry's cross-app service idea): keyword-only functions and plain data,
never Signal's models or tables. Re-exports of the modules that implement them.

- Ingest: validate and apply a batch of events as the API does (`events_ingest`), then drain the streams into
  the event log (`events_drain_all`), for the demo and the offline evaluation.
- Erasure: Signal's part of erasing a shopper (its trace, online keys, online state and log), which
  `operations.erasure` orchestrates.

The online state and the logs (event types, popularity, the log's partitions) are being moved to Graph's state
package; until then their modules are imported where they are.
"""

from __future__ import annotations

from signals_app.consumer import DrainReport, events_drain_all
from signals_app.erasure import (
    linked_sessions_forget,
    shopper_log_erase,
    shopper_online_erase,
    shopper_online_keys,
    shopper_trace,
)
from signals_app.services import EVENT_BATCH_MAX, IngestReport, events_ingest

__all__ = [
    "EVENT_BATCH_MAX",
    "DrainReport",
    "IngestReport",
    "events_drain_all",
    "events_ingest",
    "linked_sessions_forget",
    "shopper_log_erase",
    "shopper_online_erase",
    "shopper_online_keys",
    "shopper_trace",
]
