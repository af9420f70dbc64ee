"""Input checks shared by every API serializer."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from personalization.access import USER_ID_IN_SESSION_NAMESPACE, user_id_in_session_namespace
from personalization.errors import ApplicationError

EXTERNAL_ID_MAX_LENGTH = 200


def reject_nul_characters(value: Any, path: str = "") -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb: refuse it at the door, naming where it was."""
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError(f"NUL characters are not allowed{f' (in {path})' if path else ''}.")
    elif isinstance(value, dict):
        for key, inner in value.items():
            reject_nul_characters(key, path)
            reject_nul_characters(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            reject_nul_characters(inner, f"{path}[{index}]")


class _StrictText:
    """Text, as the schema declares it: a JSON number or boolean is refused, not made a string."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")  # type: ignore[attr-defined]
        return str(super().to_internal_value(data))  # type: ignore[misc]


class StrictCharField(_StrictText, serializers.CharField):
    pass


class StrictSlugField(_StrictText, serializers.SlugField):
    pass


class StrictBooleanField(serializers.BooleanField):
    """true or false, as the schema declares it: not 0, 1 or "yes"."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


def item_id_validate(item_id: str) -> str:
    """An item id taken from a URL path: 400 naming `item_id` rather than a database error (e.g. on NUL)."""
    if len(item_id) > EXTERNAL_ID_MAX_LENGTH or "\x00" in item_id or not item_id.strip():
        raise ApplicationError(
            f"item_id: must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters without NUL.",
            errors={"item_id": [f"Must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters without NUL."]},
        )
    return item_id


def user_id_validate(user_id: str) -> str:
    """A user id taken from a URL path: 400 naming `user_id`."""
    if len(user_id) > EXTERNAL_ID_MAX_LENGTH or "\x00" in user_id or not user_id.strip():
        raise ApplicationError(
            f"user_id: must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters without NUL.",
            errors={"user_id": [f"Must be 1 to {EXTERNAL_ID_MAX_LENGTH} characters without NUL."]},
        )
    user_id_namespace_check(user_id)
    return user_id


def user_id_namespace_check(user_id: str) -> None:
    """400 naming `user_id` when it is in the namespace the API keeps for sessions."""
    if user_id_in_session_namespace(user_id):
        raise ApplicationError(
            f"user_id: {USER_ID_IN_SESSION_NAMESPACE}", errors={"user_id": [USER_ID_IN_SESSION_NAMESPACE]}
        )


# Bounds on any JSON the API takes: deeper nesting or wider integers than these cannot be stored, indexed or shown
# safely (Python's recursion limit, jsonb and Redis encoders, 64-bit counters), so they are 400 at the door.
JSON_MAX_DEPTH = 32
JSON_INT_MIN = -(2**63)
JSON_INT_MAX = 2**63 - 1
JSON_PATH_SHOWN_MAX = 200


NUMERIC_ID_MESSAGE = "A numeric id must be a whole number within 64 bits (signed); send other ids as strings."


def numeric_id_text(value: int | float) -> str | None:
    """A numeric id as text, or None when it is not a whole number within signed 64 bits: orjson reads a longer
    integer as a float, whose text would be another id (18446744073709551616 -> "1.8446744073709552e+19")."""
    if isinstance(value, int) and JSON_INT_MIN <= value <= JSON_INT_MAX:
        return str(value)
    return None


class JsonLimitExceeded(ApplicationError):
    """A value beyond the JSON bounds, at `path` (e.g. "items[0].attributes.size")."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        field = path or "body"
        if len(field) > JSON_PATH_SHOWN_MAX:  # a path 32 keys deep can be long: its start says where
            field = field[: JSON_PATH_SHOWN_MAX - 1] + "…"
        super().__init__(f"{field}: {problem}", errors={field: [problem]})

    @property
    def located(self) -> str:
        """The problem and where, for a message of the field that holds the value."""
        return f"{self.problem} (at {self.path})" if self.path else self.problem


def json_limits_check(value: Any, *, stored: bool = True) -> None:
    """Raises JsonLimitExceeded naming a value nested deeper than JSON_MAX_DEPTH containers, an integer outside
    signed 64 bits or a number that is not finite. A value to be `stored` (jsonb, then re-read and re-encoded)
    also keeps its other numbers within that range: jsonb writes 1e300 back as a 301-digit integer. Iterative, so
    any depth a parser let through is walked without recursion."""
    pending: list[tuple[Any, str, int]] = [(value, "", 0)]
    while pending:
        current, path, depth = pending.pop()
        if isinstance(current, bool):
            continue
        if isinstance(current, int):
            if not JSON_INT_MIN <= current <= JSON_INT_MAX:
                raise JsonLimitExceeded(path, "Integers must fit in 64 bits (signed).")
        elif isinstance(current, float):
            if not math.isfinite(current):
                raise JsonLimitExceeded(path, "Numbers must be finite.")
            if stored and not JSON_INT_MIN <= current <= JSON_INT_MAX:
                raise JsonLimitExceeded(path, "Numbers must be within the signed 64-bit range.")
        elif isinstance(current, dict | list):
            if depth >= JSON_MAX_DEPTH:
                raise JsonLimitExceeded(path, f"Must not be nested deeper than {JSON_MAX_DEPTH} levels.")
            if isinstance(current, dict):
                pending.extend(
                    (inner, f"{path}.{key}" if path else str(key), depth + 1) for key, inner in current.items()
                )
            else:
                pending.extend((inner, f"{path}[{index}]", depth + 1) for index, inner in enumerate(current))


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JsonObjectField(serializers.JSONField):
    """A JSON object (not a list or scalar), without NUL characters."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        try:  # before DRF's own JSON round trip, which would recurse into any depth
            json_limits_check(data)
        except JsonLimitExceeded as refused:
            raise serializers.ValidationError(refused.located) from refused
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        reject_nul_characters(value)
        return value
