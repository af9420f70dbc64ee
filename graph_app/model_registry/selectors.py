from __future__ import annotations

import functools
import io

import numpy as np

from scoring_app.models import ModelVersion


def model_version_active(*, kind: str) -> ModelVersion | None:
    return ModelVersion.objects.filter(kind=kind, state=ModelVersion.State.ACTIVE).defer("artifact").first()


def model_artifact(*, version: str) -> bytes:
    return bytes(ModelVersion.objects.values_list("artifact", flat=True).get(version=version))


@functools.lru_cache(maxsize=4)
def _artifact_arrays(version: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(model_artifact(version=version))) as archive:
        return {name: archive[name] for name in archive.files}


def model_artifact_arrays(*, version: str) -> dict[str, np.ndarray]:
    """The arrays of a stored artifact; kept in process memory since versions never change."""
    return _artifact_arrays(version)
