"""The built-in event types and what each one means to the online state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventType:
    name: str
    needs_item: bool
    # Weight in item popularity; 0 leaves popularity alone.
    popularity_weight: float
    # Whether the item joins the user's recent items (what the shelf is personalised from).
    marks_interest: bool


BUILT_IN_EVENT_TYPES: dict[str, EventType] = {
    event_type.name: event_type
    for event_type in (
        EventType("view", needs_item=True, popularity_weight=1.0, marks_interest=True),
        EventType("click", needs_item=True, popularity_weight=2.0, marks_interest=True),
        EventType("dwell", needs_item=True, popularity_weight=1.0, marks_interest=True),
        EventType("add_to_cart", needs_item=True, popularity_weight=4.0, marks_interest=True),
        EventType("remove_from_cart", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("purchase", needs_item=True, popularity_weight=8.0, marks_interest=True),
        EventType("save", needs_item=True, popularity_weight=3.0, marks_interest=True),
        EventType("skip", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("hide", needs_item=True, popularity_weight=0.0, marks_interest=False),
        EventType("share", needs_item=True, popularity_weight=3.0, marks_interest=True),
        EventType("search", needs_item=False, popularity_weight=0.0, marks_interest=False),
    )
}
