from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from graph_app.model_registry.models import ModelVersion
from personalization.process_caches import process_cache


def model_version_active(*, kind: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, state=ModelVersion.State.ACTIVE).defer("artifact").first()


def model_version_kind(*, version: str) -> str | None:
    """The kind of a registered version (embeddings, ranker, bandit), or None when no such version exists: one
    indexed lookup, without reading the artifact."""
    return ModelVersion.objects.filter(version=version).values_list("kind", flat=True).first()


def model_artifact(*, version: str) -> bytes:
    return bytes(ModelVersion.objects.values_list("artifact", flat=True).get(version=version))


@functools.lru_cache(maxsize=4)
def _artifact_arrays(version: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(model_artifact(version=version))) as archive:
        return {name: archive[name] for name in archive.files}


def model_artifact_arrays(*, version: str) -> dict[str, np.ndarray]:
    """The arrays of a stored artifact; kept in process memory since versions never change."""
    return _artifact_arrays(version)


@process_cache("graph.model_artifact_arrays")
def model_artifact_arrays_forget() -> None:
    # Version names could repeat across databases (the evaluation's scratch stores).
    _artifact_arrays.cache_clear()


@dataclass(frozen=True, slots=True)
class ServingVersion:
    """An active or canary version, as dashboards and metrics show it."""

    kind: str
    state: str
    version: str
    created_at: datetime
    canary_percent: int


def model_versions_serving() -> list[ServingVersion]:
    """The active and canary versions of every kind, newest first; one query."""
    rows = ModelVersion.objects.filter(state__in=[ModelVersion.State.ACTIVE, ModelVersion.State.CANARY])
    return [
        ServingVersion(kind=kind, state=state, version=version, created_at=created_at, canary_percent=percent)
        for kind, state, version, created_at, percent in rows.values_list(
            "kind", "state", "version", "created_at", "canary_percent"
        )
    ]


def model_versions_of_kind(*, kind: str, limit: int = 50) -> list[ServingVersion]:
    """The `limit` newest versions of a kind in any state (what off-policy evaluation may score); one query."""
    rows = ModelVersion.objects.filter(kind=kind).order_by("-created_at")[:limit]
    return [
        ServingVersion(kind=kind, state=state, version=version, created_at=created_at, canary_percent=percent)
        for kind, state, version, created_at, percent in rows.values_list(
            "kind", "state", "version", "created_at", "canary_percent"
        )
    ]
