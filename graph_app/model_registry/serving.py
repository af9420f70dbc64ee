"""The registry as serving processes read it: plain SQL, no ORM objects (Score's `engine/registry.py` loads models
in a background thread on the hot path's behalf). The same two queries it ran on the table before the move."""

from __future__ import annotations

from django.db import connection


def model_versions_serving_rows(*, kind: str) -> list[tuple[str, str, int]]:
    """(state, version, canary_percent) of this kind's active and canary versions."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, version, canary_percent FROM scoring_app_modelversion "
            "WHERE kind = %s AND state IN ('active', 'canary')",
            [kind],
        )
        return list(cursor.fetchall())


def model_artifact_read(*, version: str) -> bytes | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT artifact FROM scoring_app_modelversion WHERE version = %s", [version])
        row = cursor.fetchone()
    return None if row is None else bytes(row[0])
