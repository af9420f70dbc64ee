"""What the layers above may use of Graph (Sentry's cross-app service idea): keyword-only functions and plain data,
never Graph's models or tables. Everything here is a re-export of the module that implements it.

The model registry lives in Graph (`graph_app.model_registry`): Graph trains embeddings into it and Score trains
and serves rankers and bandits from it. Its ORM-returning services (`model_version_create`, ...) are the control
plane's (training, admin); serving reads through `model_versions_serving_rows` / `model_artifact_read`, no ORM.
"""

from __future__ import annotations

from graph_app.model_registry.models import ModelVersion
from graph_app.model_registry.selectors import (
    ServingVersion,
    model_artifact,
    model_artifact_arrays,
    model_version_active,
    model_versions_serving,
)
from graph_app.model_registry.services import (
    model_version_canary,
    model_version_create,
    model_version_promote,
    model_version_publish,
    model_version_register,
    model_version_retire,
    model_version_rollback,
    models_serving_publish,
)
from graph_app.model_registry.serving import model_artifact_read, model_versions_serving_rows

# The registry's vocabularies (choices, not the model): kinds of model and states of a version.
ModelKind = ModelVersion.Kind
ModelState = ModelVersion.State

__all__ = [
    "ModelKind",
    "ModelState",
    "ServingVersion",
    "model_artifact",
    "model_artifact_arrays",
    "model_artifact_read",
    "model_version_active",
    "model_version_canary",
    "model_version_create",
    "model_version_promote",
    "model_version_publish",
    "model_version_register",
    "model_version_retire",
    "model_version_rollback",
    "model_versions_serving",
    "model_versions_serving_rows",
    "models_serving_publish",
]
