"""The model registry's writes: store versions, promote, canary, retire, roll back.

PostgreSQL holds the truth (versions, states, artifacts). Serving processes learn about changes from one Redis hash
(`models:serving`, a field per kind) that every recommendation request already reads in its pipeline; it is
rewritten after each commit and, as a safety net after a Redis restart, by `models_serving_publish` on a schedule.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime

import numpy as np
import orjson
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from graph_app.model_registry.models import ModelVersion
from personalization import redis_keys
from personalization.redis_client import get_control_redis

logger = logging.getLogger(__name__)

# Retired versions kept per kind for rollback and audit; older ones are deleted when a new one is stored.
RETIRED_VERSIONS_KEPT = 20
State = ModelVersion.State


def _version_name(kind: str) -> str:
    return f"{kind}-{timezone.now():%Y%m%d%H%M%S%f}"


def models_serving_snapshot(*, kind: str) -> dict[str, object]:
    """What serving processes need to know about a kind: the active version and the canary with its share."""
    active = ModelVersion.objects.filter(kind=kind, state=State.ACTIVE).values_list("version", flat=True).first()
    canary = ModelVersion.objects.filter(kind=kind, state=State.CANARY).values("version", "canary_percent").first()
    return {
        "active": active,
        "canary": canary["version"] if canary else None,
        "canary_percent": canary["canary_percent"] if canary else 0,
    }


def models_serving_publish(*, kinds: list[str] | None = None) -> dict[str, dict[str, object]]:
    """Write the serving snapshot of these kinds (all by default) to Redis; idempotent."""
    snapshots = {kind: models_serving_snapshot(kind=kind) for kind in (kinds or ModelVersion.Kind.values)}
    pipeline = get_control_redis().pipeline(transaction=False)  # training and beat: control plane
    pipeline.hset(redis_keys.MODELS_SERVING, mapping={kind: orjson.dumps(value) for kind, value in snapshots.items()})
    for kind, snapshot in snapshots.items():
        # The embeddings version also keys the user caches of retrieval (kept as its own key for that).
        if snapshot["active"]:
            pipeline.set(redis_keys.active_model(kind), str(snapshot["active"]))
        else:
            pipeline.delete(redis_keys.active_model(kind))
    pipeline.execute()
    return snapshots


def _publish_on_commit(kind: str) -> None:
    transaction.on_commit(lambda: models_serving_publish(kinds=[kind]))


def _prune_retired(kind: str) -> None:
    keep = ModelVersion.objects.filter(kind=kind, state=State.RETIRED).values_list("pk", flat=True)[
        :RETIRED_VERSIONS_KEPT
    ]
    # What a rollback of the serving versions would return to.
    protected = (
        ModelVersion.objects.filter(kind=kind, state__in=[State.ACTIVE, State.CANARY])
        .exclude(replaced_version="")
        .values_list("replaced_version")
    )
    ModelVersion.objects.filter(kind=kind, state=State.RETIRED).exclude(pk__in=list(keep)).exclude(
        version__in=protected
    ).delete()


def model_version_create(
    *,
    kind: str,
    artifact: bytes,
    metrics: dict[str, object],
    feature_names: list[str] | None = None,
    training_window: tuple[datetime | None, datetime | None] = (None, None),
) -> ModelVersion:
    """Store a new version as a candidate: it serves nobody until promoted or canaried."""
    if kind not in ModelVersion.Kind.values:
        raise ValidationError({"kind": f"Unknown model kind '{kind}'."})
    model_version = ModelVersion.objects.create(
        kind=kind,
        version=_version_name(kind),
        state=State.CANDIDATE,
        metrics=metrics,
        feature_names=list(feature_names or []),
        training_window_start=training_window[0],
        training_window_end=training_window[1],
        artifact=artifact,
    )
    return model_version


@transaction.atomic
def model_version_promote(*, model_version: ModelVersion) -> ModelVersion:
    """Make this version the active one of its kind; the previous active one retires (and is what a rollback
    returns to). Serving processes swap to it within a request or two, without a failed request."""
    locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
    if locked.state == State.ACTIVE:
        return locked
    previous = ModelVersion.objects.select_for_update().filter(kind=locked.kind, state=State.ACTIVE).first()
    if previous is not None:
        previous.state = State.RETIRED
        previous.save(update_fields=["state"])
    locked.state = State.ACTIVE
    locked.canary_percent = 0
    locked.promoted_at = timezone.now()
    locked.replaced_version = previous.version if previous else ""
    locked.save(update_fields=["state", "canary_percent", "promoted_at", "replaced_version"])
    logger.info("score.model_promoted", extra={"kind": locked.kind, "version": locked.version})
    _prune_retired(locked.kind)
    _publish_on_commit(locked.kind)
    return locked


@transaction.atomic
def model_version_canary(*, model_version: ModelVersion, percent: int) -> ModelVersion:
    """Serve this version to `percent`% of users (a stable hash of the user picks them); any earlier canary of
    the kind goes back to being a candidate."""
    if not 1 <= percent <= 100:
        raise ValidationError({"canary_percent": "A canary serves between 1 and 100 percent of users."})
    locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
    if locked.state == State.ACTIVE:
        raise ValidationError({"state": "The active version already serves everyone; canary a candidate instead."})
    ModelVersion.objects.filter(kind=locked.kind, state=State.CANARY).exclude(pk=locked.pk).update(
        state=State.CANDIDATE, canary_percent=0
    )
    locked.state = State.CANARY
    locked.canary_percent = percent
    locked.save(update_fields=["state", "canary_percent"])
    _publish_on_commit(locked.kind)
    return locked


@transaction.atomic
def model_version_retire(*, model_version: ModelVersion) -> ModelVersion:
    locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
    if locked.state == State.ACTIVE:
        raise ValidationError({"state": "Promote another version or roll back before retiring the active one."})
    locked.state = State.RETIRED
    locked.canary_percent = 0
    locked.save(update_fields=["state", "canary_percent"])
    _publish_on_commit(locked.kind)
    return locked


@transaction.atomic
def model_version_rollback(*, kind: str) -> ModelVersion:
    """One action: the active version retires and the one it replaced serves again."""
    active = ModelVersion.objects.select_for_update().filter(kind=kind, state=State.ACTIVE).first()
    if active is None or not active.replaced_version:
        raise ValidationError({"kind": f"There is no earlier {kind} version to roll back to."})
    previous = ModelVersion.objects.select_for_update().filter(version=active.replaced_version).first()
    if previous is None:
        raise ValidationError({"kind": f"The earlier version {active.replaced_version} no longer exists."})
    active.state = State.RETIRED
    active.save(update_fields=["state"])
    previous.state = State.ACTIVE
    previous.canary_percent = 0
    previous.promoted_at = timezone.now()
    previous.save(update_fields=["state", "canary_percent", "promoted_at"])
    logger.info("score.model_rolled_back", extra={"kind": kind, "from": active.version, "to": previous.version})
    _publish_on_commit(kind)
    return previous


def model_version_publish(
    *,
    kind: str,
    artifact: bytes,
    metrics: dict[str, object],
    feature_names: list[str] | None = None,
    training_window: tuple[datetime | None, datetime | None] = (None, None),
) -> ModelVersion:
    """Store a version and make it active at once (embeddings, bandit updates: no holdout gate)."""
    with transaction.atomic():
        created = model_version_create(
            kind=kind, artifact=artifact, metrics=metrics, feature_names=feature_names, training_window=training_window
        )
        return model_version_promote(model_version=created)


def model_version_register(*, kind: str, arrays: dict[str, np.ndarray], metrics: dict[str, object]) -> ModelVersion:
    """Store numpy arrays as a new active version of `kind`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub takes **kwds as bool
    return model_version_publish(kind=kind, artifact=buffer.getvalue(), metrics=metrics)
