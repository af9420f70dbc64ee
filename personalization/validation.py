"""Input checks shared by every API serializer."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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


@extend_schema_field({"type": "object", "additionalProperties": {}})
class JsonObjectField(serializers.JSONField):
    """A JSON object (not a list or scalar), without NUL characters."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        reject_nul_characters(value)
        return value


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
    return user_id
