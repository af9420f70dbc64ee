"""One error type for the services and one shape for every API error:
{"detail": str, "code": str, "errors": {field: [messages]}, "message": str}. `message` repeats `detail` because
Segment's and RudderStack's libraries read it (RudderStack's crashes without it)."""

from __future__ import annotations

from typing import Any

from rest_framework import status


class ApplicationError(Exception):
    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid",
        errors: dict[str, list[str]] | None = None,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """`extra`: fields of the body beside the error shape's (an operation declares them in its schema)."""
        super().__init__(message)
        self.message = message
        self.code = code
        self.errors = errors or {}
        self.status_code = status_code
        self.extra = extra or {}
        self.headers = headers or {}


def error_body(*, detail: str, code: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The body of every API error, wherever it is written."""
    return {"detail": detail, "code": code, "errors": errors or {}, "message": detail}


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into {"a.b.0.c": ["message"]} so every message names its field."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = "non_field_errors" if key == "non_field_errors" and not prefix else f"{prefix}{key}"
            flat.update(flatten_errors(value, f"{name}."))
        return flat
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return {prefix.rstrip(".") or "non_field_errors": [str(item) for item in detail]}
        flat = {}
        for index, item in enumerate(detail):
            if item:
                flat.update(flatten_errors(item, f"{prefix}{index}."))
        return flat
    return {prefix.rstrip(".") or "non_field_errors": [str(detail)]}


def first_message(errors: dict[str, list[str]]) -> str:
    for field, messages in errors.items():
        if messages:
            return f"{field}: {messages[0]}"
    return "Invalid input."
