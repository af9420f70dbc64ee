"""Input checks shared by every API serializer."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


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


class JsonObjectField(serializers.JSONField):
    """A JSON object (not a list or scalar), without NUL characters."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        reject_nul_characters(value)
        return value
