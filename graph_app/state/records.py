"""What the stream consumer hands to the durable log: a validated event, when the platform received it, and the
served slate it is attributed to (when it carried a request_id that matched one); and the validated event itself
(`signals_app.validation` builds it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EventInput:
    event_id: str
    type: str
    user_id: str
    session_id: str
    item_id: str
    placement: str
    request_id: str
    slot: int | None
    value: float | None
    context: dict[str, Any]
    occurred_at: datetime

    @property
    def user_key(self) -> str:
        """Whom the online state belongs to: the user, or the anonymous session until it is identified."""
        return self.user_id or f"session:{self.session_id}"


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
