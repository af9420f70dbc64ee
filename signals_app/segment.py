"""Segment / RudderStack calls mapped to platform events: pure functions, no I/O.

A storefront already instrumented with Segment (or RudderStack, which follows the same spec) forwards its calls
unchanged; each call becomes zero or more platform raw events for `events_ingest`, zero or more identity links,
traits for a user, or a list of problems that reject it. The views (`segment_apis.py`) do the I/O.

Call types:
- `track`: the E-commerce Spec v2 names in TRACK_EVENT_TYPES map to platform types; `Order Completed` fans out
  into one purchase per `properties.products[]` entry (event id "{messageId}:{index}"); every other name, e.g.
  Product List Viewed or Cart Viewed, is kept as a "custom" event with the name in `context["segment_event"]`.
- `page` / `screen`: kept as "custom" events whose `context["segment_event"]` is "page" / "screen", so the
  durable log has the navigation (they carry no item, so they change no recommendation).
- `identify` with both userId and anonymousId links the anonymous session to the user. Its `traits` (or
  `context.traits`, where RudderStack puts them) are merged into the user's traits, what rule audiences match,
  when it has a userId; an anonymous user has none to keep.
- `alias` links previousId (treated as the session id) to userId.
- `group` merges the group into the user's traits: `group.id` (the groupId) and each trait as `group.<name>`,
  so an audience can say `traits.group.plan`. Without a userId it is accepted without effect.
Identify, alias and group are not deduplicated by messageId: linking the same pair or merging the same traits
again changes nothing.

Every call needs a `messageId` (the idempotency key, at most 100 characters), at most 32 KB and no NUL
character anywhere; track, page and screen need userId or anonymousId.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from personalization.access import USER_ID_IN_SESSION_NAMESPACE, user_id_in_session_namespace
from personalization.validation import NUMERIC_ID_MESSAGE, numeric_id_text
from signals_app.validation import EVENT_ID_MAX_LENGTH, EVENT_MAX_BYTES, IDENTITY_MAX_LENGTH, SLOT_MAX, parse_timestamp

SEGMENT_CALL_MAX_BYTES = 32 * 1024
SEGMENT_BATCH_MAX_BYTES = 500 * 1024

# E-commerce Spec v2 names (compared case- and separator-insensitively, see _name_key) -> platform event type.
TRACK_EVENT_TYPES: dict[str, str] = {
    "product viewed": "view",
    "product clicked": "click",
    "product added": "add_to_cart",
    "wishlist product added to cart": "add_to_cart",
    "product removed": "remove_from_cart",
    "product added to wishlist": "save",
    "product shared": "share",
    "products searched": "search",
    "order completed": "purchase",
}
# Platform types that need an item; their calls are rejected without product_id or sku.
ITEM_EVENT_TYPES = frozenset({"view", "click", "add_to_cart", "remove_from_cart", "purchase", "save", "share"})
ORDER_COMPLETED = "order completed"
CALL_TYPES = frozenset({"track", "identify", "page", "screen", "alias", "group"})

ITEM_ID_KEYS = ("product_id", "sku")
REQUEST_ID_KEYS = ("request_id", "recommendation_id", "recommId")
VALUE_KEYS = ("value", "revenue", "price")
# Context keys dropped, in this order, when an event would exceed the platform's 32 KB per event.
CONTEXT_DROP_ORDER = ("segment_context", "product", "properties")


@dataclass
class MappedCall:
    """What one Segment call becomes. `event_fields[i]` names, for `events[i]`, the Segment field each platform
    field came from, so an error found by the ingest names the field the sender knows."""

    events: list[dict[str, Any]] = field(default_factory=list)
    event_fields: list[dict[str, str]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (user_id, session_id)
    traits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (user_id, traits to merge)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (Segment field, message)


@dataclass
class SegmentReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
        }


def segment_call_map(
    call: Any,
    *,
    now: datetime,
    batch_context: dict[str, Any] | None = None,
    batch_sent_at: Any = None,
    call_type: str | None = None,
) -> MappedCall:
    """One call -> events, links or problems. `batch_context` and `batch_sent_at` are a batch's top-level
    context (the call's own keys win) and sentAt; `call_type` forces the type (the single-call track endpoint)."""
    mapped = MappedCall()
    if not isinstance(call, dict):
        mapped.problems.append(("call", "Must be a JSON object."))
        return mapped
    nul_at = _nul_path(call, "")
    if nul_at is not None:
        mapped.problems.append((nul_at or "call", "NUL characters are not allowed."))
        return mapped
    if len(orjson.dumps(call)) > SEGMENT_CALL_MAX_BYTES:
        mapped.problems.append(("call", f"A call must be at most {SEGMENT_CALL_MAX_BYTES // 1024} KB."))
        return mapped
    if batch_context and _nul_path(batch_context, "") is not None:
        mapped.problems.append(("context", "NUL characters are not allowed."))
        return mapped

    kind = call_type or call.get("type")
    kind = kind.lower() if isinstance(kind, str) else ""
    if not kind:
        mapped.problems.append(("type", "This field is required."))
    elif kind not in CALL_TYPES:
        mapped.problems.append(("type", f"Must be one of {', '.join(sorted(CALL_TYPES))}."))
    message_id = _text(call, "messageId", EVENT_ID_MAX_LENGTH, mapped.problems, required=True)
    user_id = _text(call, "userId", IDENTITY_MAX_LENGTH, mapped.problems)
    if user_id_in_session_namespace(user_id):
        mapped.problems.append(("userId", USER_ID_IN_SESSION_NAMESPACE))
    anonymous_id = _text(call, "anonymousId", IDENTITY_MAX_LENGTH, mapped.problems)
    previous_id = ""
    if kind == "alias":
        previous_id = _text(call, "previousId", IDENTITY_MAX_LENGTH, mapped.problems, required=True)
        if not user_id and not _has_problem(mapped, "userId"):
            mapped.problems.append(("userId", "This field is required."))
    elif not user_id and not anonymous_id and not _has_problem(mapped, "userId", "anonymousId"):
        mapped.problems.append(("userId", "Either userId or anonymousId is required."))
    properties = call.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        mapped.problems.append(("properties", "Must be a JSON object."))
    segment_context = call.get("context")
    if segment_context is not None and not isinstance(segment_context, dict):
        mapped.problems.append(("context", "Must be a JSON object."))
    traits, traits_field = _traits(call, kind, segment_context)
    if traits is not None and not isinstance(traits, dict):
        mapped.problems.append((traits_field, "Must be a JSON object."))
    group_id = _text(call, "groupId", IDENTITY_MAX_LENGTH, mapped.problems, required=True) if kind == "group" else ""
    if mapped.problems:
        return mapped

    if kind == "identify":
        if user_id and anonymous_id:
            mapped.links.append((user_id, anonymous_id))
        if user_id and traits:
            mapped.traits.append((user_id, traits))
        return mapped
    if kind == "alias":
        mapped.links.append((user_id, previous_id))
        return mapped
    if kind == "group":
        if user_id:
            group_traits = {f"group.{name}": value for name, value in (traits or {}).items()}
            mapped.traits.append((user_id, {**group_traits, "group.id": group_id}))
        return mapped

    base: dict[str, Any] = {"event_id": message_id}
    fields = {"event_id": "messageId", "event": "call", "context": "properties"}
    if user_id:
        base["user_id"] = user_id
        fields["user_id"] = "userId"
    if anonymous_id:
        base["session_id"] = anonymous_id
        fields["session_id"] = "anonymousId"
    timestamp, timestamp_field = _timestamp(call, now, batch_sent_at)
    if timestamp is not None:
        base["timestamp"] = timestamp
        fields["timestamp"] = timestamp_field
    merged_context = {**(batch_context or {}), **(segment_context or {})}

    if kind in ("page", "screen"):
        extra = {key: call[key] for key in ("name", "category") if call.get(key) is not None}
        event = {**base, "type": "custom", "context": _context(kind, dict(properties), merged_context, extra)}
        _add_event(mapped, event, fields)
        return mapped

    name = call.get("event")
    if not isinstance(name, str) or not name.strip():
        mapped.problems.append(("event", "The event name is required."))
        return mapped
    name_key = _name_key(name)
    if name_key == ORDER_COMPLETED and properties.get("products"):
        _order_completed(mapped, name, base, fields, properties, merged_context)
        return mapped
    event_type = TRACK_EVENT_TYPES.get(name_key, "custom")
    if name_key == ORDER_COMPLETED:
        event_type = "custom"  # an order without products has no item to credit: logged, not a purchase
    rest = dict(properties)
    event, event_fields = _product_fields(rest, "properties")
    if event_type in ITEM_EVENT_TYPES and "item_id" not in event:
        mapped.problems.append(("properties.product_id", f"Required for '{name}' (product_id or sku)."))
        return mapped
    extra = {}
    if event_type == "search" and "query" in rest:
        extra["query"] = rest.pop("query")
    event = {**base, **event, "type": event_type, "context": _context(name, rest, merged_context, extra)}
    _add_event(mapped, event, {**fields, **event_fields})
    return mapped


def segment_report(
    *, calls: list[MappedCall], ingest_errors: list[dict[str, Any]], accepted_ids: list[str]
) -> SegmentReport:
    """Per call: rejected when it had problems or the ingest rejected one of its events, else accepted when one
    of its events was new (or it had none: identify, alias, group), else a duplicate. `ingest_errors` index the
    events of all calls in order; `accepted_ids` are the event ids the ingest stored as new, in order."""
    report = SegmentReport()
    errors_by_event: dict[int, list[dict[str, Any]]] = {}
    for error in ingest_errors:
        errors_by_event.setdefault(error["index"], []).append(error)
    unclaimed = Counter(accepted_ids)
    position = 0
    for index, call in enumerate(calls):
        problems = list(call.problems)
        any_new = False
        for event, event_fields in zip(call.events, call.event_fields, strict=True):
            for error in errors_by_event.get(position, []):
                problems.append((event_fields.get(error["field"], error["field"]), error["message"]))
            if position not in errors_by_event and unclaimed[event["event_id"]] > 0:
                # The first valid occurrence of an id is the one the ingest stored; later ones are duplicates.
                unclaimed[event["event_id"]] -= 1
                any_new = True
            position += 1
        if problems:
            report.rejected += 1
            unique = dict.fromkeys(problems)  # a fan-out can hit the same problem once per product
            report.errors.extend({"index": index, "field": name, "message": message} for name, message in unique)
        elif any_new or not call.events:
            report.accepted += 1
        else:
            report.duplicates += 1
    return report


def _order_completed(
    mapped: MappedCall,
    name: str,
    base: dict[str, Any],
    fields: dict[str, str],
    properties: dict[str, Any],
    segment_context: dict[str, Any],
) -> None:
    products = properties["products"]
    if not isinstance(products, list):
        mapped.problems.append(("properties.products", "Must be a list."))
        return
    order = {key: value for key, value in properties.items() if key != "products"}
    order_event, order_fields = _product_fields(order, "properties", item=False, value=False, slot=False)
    events: list[tuple[dict[str, Any], dict[str, str]]] = []
    for index, product in enumerate(products):
        prefix = f"properties.products.{index}"
        if not isinstance(product, dict):
            mapped.problems.append((prefix, "Must be a JSON object."))
            continue
        rest = dict(product)
        event, event_fields = _product_fields(rest, prefix, value=False)
        if "item_id" not in event:
            mapped.problems.append((f"{prefix}.product_id", f"Required for '{name}' (product_id or sku)."))
            continue
        line_value = _line_value(product)
        if line_value is not None:
            event["value"] = line_value
            event_fields["value"] = f"{prefix}.price"
        event = {
            **base,
            **order_event,
            **event,
            "event_id": _fan_out_event_id(base["event_id"], index),
            "type": "purchase",
            "context": _context(name, dict(order), segment_context, {"product": rest, "product_index": index}),
        }
        events.append((event, {**fields, **order_fields, **event_fields}))
    if mapped.problems:
        return  # all or nothing per call, so a fixed resend is not half duplicates
    for event, event_fields in events:
        _add_event(mapped, event, event_fields)


def _product_fields(
    properties: dict[str, Any], prefix: str, *, item: bool = True, value: bool = True, slot: bool = True
) -> tuple[dict[str, Any], dict[str, str]]:
    """The platform fields found in a properties (or product) object, popped from it, and where each came from."""
    event: dict[str, Any] = {}
    fields: dict[str, str] = {}
    if item:
        for key in ITEM_ID_KEYS:
            if _present(properties.get(key)):
                event["item_id"] = _id_text(properties.pop(key))
                fields["item_id"] = f"{prefix}.{key}"
                break
    if _present(properties.get("list_id")):
        event["placement"] = _id_text(properties.pop("list_id"))
        fields["placement"] = f"{prefix}.list_id"
    for key in REQUEST_ID_KEYS:
        if _present(properties.get(key)):
            event["request_id"] = _id_text(properties.pop(key))
            fields["request_id"] = f"{prefix}.{key}"
            break
    if slot:
        position = _slot(properties.get("position"))
        if position is not None:  # anything else (a promotion's "home_banner_top", 0) stays in the context
            properties.pop("position")
            event["slot"] = position
            fields["slot"] = f"{prefix}.position"
    if value:
        for key in VALUE_KEYS:
            number = _number(properties.get(key))
            if number is not None:
                properties.pop(key)
                event["value"] = number
                fields["value"] = f"{prefix}.{key}"
                break
    return event, fields


def _context(
    name: str, properties: dict[str, Any], segment_context: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    context: dict[str, Any] = {"segment_event": name, **extra}
    if properties:
        context["properties"] = properties
    if segment_context:
        context["segment_context"] = segment_context
    return context


def _add_event(mapped: MappedCall, event: dict[str, Any], fields: dict[str, str]) -> None:
    """Keeps the event within the platform's 32 KB: a batch's shared context is added to every call, so a call
    within its own 32 KB can still grow past it. The bulkiest parts go first, and the context says which."""
    context = event["context"]
    for key in CONTEXT_DROP_ORDER:
        if len(orjson.dumps(event)) <= EVENT_MAX_BYTES:
            break
        if key in context:
            del context[key]
            context.setdefault("truncated", []).append(key)
    mapped.events.append(event)
    mapped.event_fields.append(fields)


def _traits(call: dict[str, Any], kind: str, segment_context: Any) -> tuple[Any, str]:
    """identify's and group's traits, and the field they came from. RudderStack's libraries send identify's
    traits in `context.traits` only."""
    if kind not in ("identify", "group"):
        return None, ""
    if call.get("traits") is None and kind == "identify" and isinstance(segment_context, dict):
        return segment_context.get("traits"), "context.traits"
    return call.get("traits"), "traits"


def _timestamp(call: dict[str, Any], now: datetime, batch_sent_at: Any) -> tuple[Any, str]:
    """`timestamp` as sent (Segment's own, already corrected); else `originalTimestamp`, corrected for the
    device's clock skew like Segment does (receivedAt - (sentAt - originalTimestamp)) when `sentAt` is there."""
    if call.get("timestamp") is not None:
        return call["timestamp"], "timestamp"
    original = call.get("originalTimestamp")
    if original is None:
        return None, ""
    sent = call.get("sentAt") if call.get("sentAt") is not None else batch_sent_at
    original_at, sent_at = parse_timestamp(original), parse_timestamp(sent)
    if original_at is not None and sent_at is not None:
        try:
            return (now - (sent_at - original_at)).isoformat(), "originalTimestamp"
        except OverflowError:  # a skew beyond the calendar: validation refuses the uncorrected time instead
            pass
    return original, "originalTimestamp"


def _fan_out_event_id(message_id: str, index: int) -> str:
    event_id = f"{message_id}:{index}"
    if len(event_id) <= EVENT_ID_MAX_LENGTH:
        return event_id
    # Still deterministic, so a resend of the same long messageId is still recognised.
    return f"{hashlib.sha256(message_id.encode()).hexdigest()}:{index}"


def _line_value(product: dict[str, Any]) -> float | None:
    price = _number(product.get("price"))
    if price is None:
        return None
    quantity = _number(product.get("quantity"))
    return price * (quantity if quantity is not None else 1)


def _slot(position: Any) -> int | None:
    """Segment positions start at 1, slots at 0; None when the position is not a whole number from 1."""
    if isinstance(position, str) and position.isdigit():
        position = int(position)
    if isinstance(position, float) and position.is_integer():
        position = int(position)
    if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= SLOT_MAX + 1:
        return None
    return position - 1


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _present(value: Any) -> bool:
    return value is not None and value != ""


def _id_text(value: Any) -> Any:
    """Numeric ids are common in storefront payloads; anything else (a float among them) is left for the ingest
    to reject."""
    if isinstance(value, int) and not isinstance(value, bool):
        return numeric_id_text(value) or value
    return value


def _text(
    raw: dict[str, Any], name: str, max_length: int, problems: list[tuple[str, str]], *, required: bool = False
) -> str:
    value = _id_text(raw.get(name))
    if not _present(value):
        if required:
            problems.append((name, "This field is required."))
        return ""
    if not isinstance(value, str):
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        problems.append((name, NUMERIC_ID_MESSAGE if numeric else "Must be a string."))
        return ""
    if len(value) > max_length:
        problems.append((name, f"Must be at most {max_length} characters."))
        return ""
    return value


def _has_problem(mapped: MappedCall, *names: str) -> bool:
    return any(name in names for name, _ in mapped.problems)


def _name_key(name: str) -> str:
    """Product Viewed, product viewed, product_viewed and "Product  Viewed" are the same event."""
    return " ".join(name.replace("_", " ").split()).lower()


def _nul_path(value: Any, path: str) -> str | None:
    """The dotted path of the first value or key holding a NUL character, or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, inner in value.items():
            inner_path = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return path
            found = _nul_path(inner, inner_path)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, inner in enumerate(value):
            found = _nul_path(inner, f"{path}.{index}")
            if found is not None:
                return found
    return None
