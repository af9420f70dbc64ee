from __future__ import annotations

import io

import numpy as np
from django.db import transaction
from django.utils import timezone

from personalization import redis_keys
from personalization.redis_client import get_redis
from scoring_app.models import ModelVersion


def model_version_register(*, kind: str, arrays: dict[str, np.ndarray], metrics: dict[str, object]) -> ModelVersion:
    """Store a new artifact and make it the active one of its kind."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    version = f"{kind}-{timezone.now():%Y%m%d%H%M%S%f}"
    with transaction.atomic():
        ModelVersion.objects.filter(kind=kind, is_active=True).update(is_active=False)
        model_version = ModelVersion.objects.create(
            kind=kind, version=version, is_active=True, metrics=metrics, artifact=buffer.getvalue()
        )
        transaction.on_commit(lambda: get_redis().set(redis_keys.active_model(kind), version))
    return model_version
