"""What the stream consumer hands to the durable log: a validated event, when the platform received it, and the
served slate it is attributed to (when it carried a request_id that matched one)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from signals_app.validation import EventInput


@dataclass(frozen=True)
class Attribution:
    """The impression an event answers: which slate (request_id), where and in which slot it was shown."""

    request_id: str
    placement: str
    slot: int | None
    model_version: str
    score: float | None
    source: str


@dataclass(frozen=True)
class EventRecord:
    event: EventInput
    received_at: datetime
    attribution: Attribution | None = None
