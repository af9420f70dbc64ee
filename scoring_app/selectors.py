from __future__ import annotations

import functools
import io

import numpy as np

from scoring_app.models import ModelVersion


def model_version_active(*, kind: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, is_active=True).defer("artifact").first()


@functools.lru_cache(maxsize=4)
def _artifact_arrays(version: str) -> dict[str, np.ndarray]:
    payload = ModelVersion.objects.values_list("artifact", flat=True).get(version=version)
    with np.load(io.BytesIO(bytes(payload))) as archive:
        return {name: archive[name] for name in archive.files}


def model_artifact_arrays(*, version: str) -> dict[str, np.ndarray]:
    """The arrays of a stored artifact; kept in process memory since versions never change."""
    return _artifact_arrays(version)
