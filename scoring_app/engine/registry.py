"""Serving models kept hot in process memory, swapped atomically when the registry changes.

Every recommendation request reads the registry's snapshot (one Redis hash, `models:serving`) in the pipeline it
sends anyway and hands it to `models_observe`. When a kind's snapshot changes, its new versions are loaded from
PostgreSQL in a background thread while requests go on with the models they have; the loaded set then replaces
the old one in a single assignment. So a promotion, canary or rollback causes no failed and no slow request. Only
a process that has no model of a kind at all loads it inline, once.

Hot path: no ORM (one SQL select of the artifact, in the loader thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from django.db import connection

from graph_app.interface import model_artifact_read, model_versions_serving_rows
from personalization import redis_keys
from personalization.buckets import BUCKETS, bucket_of
from personalization.process_caches import process_cache

logger = logging.getLogger(__name__)

# Without a snapshot in Redis (flushed, restarted) a process asks PostgreSQL directly, at most this often.
DATABASE_CHECK_SECONDS = 30.0
LOADED_VERSIONS_KEPT = 4
LOAD_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class ServingModel:
    version: str
    model: Any


@dataclass(frozen=True)
class KindServing:
    snapshot: bytes
    active: ServingModel | None
    canary: ServingModel | None
    canary_percent: int


_loaders: dict[str, Callable[[bytes], Any]] = {}
_serving: dict[str, KindServing] = {}
_loaded: dict[str, ServingModel] = {}  # version -> model, a few recent ones (rollbacks are instant)
# Versions that running experiments serve (version -> kind): loaded ahead, in the background, and never evicted.
_experiment_versions: dict[str, str] = {}
_preload_failed_until: dict[str, float] = {}  # a version that failed to load is tried again after a while
_loading: set[str] = set()
_last_database_check: dict[str, float] = {}
_failed_until: dict[bytes, float] = {}
# Bumped by _models_forget: a loader thread started before must not install its (now outdated) result.
_generation = [0]
_lock = threading.Lock()


def register_loader(kind: str, loader: Callable[[bytes], Any]) -> None:
    """How to turn a stored artifact of `kind` into a model object serving can call."""
    _loaders[kind] = loader


def model_load(kind: str, artifact: bytes) -> Any:
    """A stored artifact of `kind` as serving would load it (its registered loader), for the control plane."""
    return _loaders[kind](artifact)


def queue_snapshot(pipeline: redis.client.Pipeline) -> None:
    pipeline.hgetall(redis_keys.MODELS_SERVING)


def user_bucket(user_key: str, *, salt: str = "") -> int:
    """A stable 0-99 bucket per user in the split salted `salt`: the same users see a canary on every request and
    every process. The canary's split is salted by its version, so each canary serves other shoppers."""
    return bucket_of(salt=f"canary:{salt}", unit=user_key) * 100 // BUCKETS


def _in_canary(serving: KindServing, user_key: str) -> bool:
    canary = serving.canary
    return canary is not None and user_bucket(user_key, salt=canary.version) < serving.canary_percent


def serving_model(kind: str, *, user_key: str, version: str | None = None) -> ServingModel | None:
    """The model of `kind` that serves the user: `version` when an experiment names one (None while it is not
    loaded: see `experiment_model`), else the canary or the active one."""
    if version is not None:
        return experiment_model(kind, version=version)
    serving = _serving.get(kind)
    if serving is None:
        return None
    return serving.canary if _in_canary(serving, user_key) else serving.active


def serving_variant(kind: str, *, user_key: str) -> str:
    """ "canary" when this user is in the canary's share of `kind`, else "control"."""
    serving = _serving.get(kind)
    return "canary" if serving is not None and _in_canary(serving, user_key) else "control"


def experiment_model(kind: str, *, version: str) -> ServingModel | None:
    """An experiment's model version of `kind`, when loaded; else None, and its load starts in the background
    (never inline: the request serves the current model meanwhile)."""
    loaded = _loaded.get(version)
    if loaded is not None and _experiment_versions.get(version) == kind:
        return loaded
    models_preload(versions={version: kind})
    return None


def models_preload(*, versions: Mapping[str, str], wait: bool = False) -> None:
    """Load the model versions running experiments serve (version -> kind) in a background thread, and keep them
    loaded (`wait`: in this thread, for tests and benchmarks). Called when the rules snapshot changes."""
    with _lock:
        _experiment_versions.update(versions)
        # Waiting, the versions load here whatever a background load is doing; else once at a time.
        now = time.monotonic()
        missing = {
            version: kind
            for version, kind in versions.items()
            if version not in _loaded
            and (wait or (f"version:{version}" not in _loading and _preload_failed_until.get(version, 0.0) < now))
        }
        _loading.update(f"version:{version}" for version in missing)
    if not missing:
        return
    if wait:
        _versions_load(missing, own_thread=False)
        return
    threading.Thread(target=_versions_load, args=(missing, True), name="model-preload", daemon=True).start()


def _versions_load(versions: Mapping[str, str], own_thread: bool) -> None:
    try:
        for version, kind in versions.items():
            if kind in _loaders and _model(kind, version) is None:
                _preload_failed_until[version] = time.monotonic() + LOAD_RETRY_SECONDS
    except Exception:
        logger.exception("score.model_preload_failed", extra={"versions": list(versions)})
    finally:
        if own_thread:
            connection.close()  # this thread's own connection
        with _lock:
            _loading.difference_update(f"version:{version}" for version in versions)


def models_observe(snapshot: dict[bytes, bytes]) -> None:
    """Compare the registry snapshot read from Redis with what this process serves; load what changed."""
    for kind in _loaders:
        raw = snapshot.get(kind.encode())
        current = _serving.get(kind)
        if raw is None:
            _check_database_later(kind, has_model=current is not None)
            continue
        if current is not None and current.snapshot == raw:
            continue
        if current is None:
            _load(kind, raw)  # nothing to serve meanwhile: load inline, once per process
        else:
            _load_in_background(kind, raw)


def models_refresh() -> None:
    """Read the snapshot and load synchronously (process start, tests, benchmarks)."""
    from personalization.redis_client import get_redis

    snapshot = get_redis().hgetall(redis_keys.MODELS_SERVING)
    for kind in _loaders:
        raw = snapshot.get(kind.encode())
        if isinstance(raw, bytes) and (kind not in _serving or _serving[kind].snapshot != raw):
            _load(kind, raw)


@process_cache("score.serving_models")
def _models_forget() -> None:
    """Drop every loaded model."""
    with _lock:
        _generation[0] += 1
        _serving.clear()
        _loaded.clear()
        _experiment_versions.clear()
        _preload_failed_until.clear()
        _last_database_check.clear()
        _failed_until.clear()


def _check_database_later(kind: str, *, has_model: bool) -> None:
    now = time.monotonic()
    if now - _last_database_check.get(kind, -DATABASE_CHECK_SECONDS) < DATABASE_CHECK_SECONDS:
        return
    _last_database_check[kind] = now
    if has_model:
        return  # keep serving what we have until the snapshot is published again
    raw = _snapshot_from_database(kind)
    if raw is not None:
        _load(kind, raw)


def _snapshot_from_database(kind: str) -> bytes | None:
    rows = model_versions_serving_rows(kind=kind)
    snapshot: dict[str, object] = {"active": None, "canary": None, "canary_percent": 0}
    for state, version, percent in rows:
        snapshot[state] = version
        if state == "canary":
            snapshot["canary_percent"] = percent
    return orjson.dumps(snapshot) if rows else None


def _load_in_background(kind: str, raw: bytes) -> None:
    with _lock:
        if kind in _loading:
            return
        _loading.add(kind)

    def run() -> None:
        try:
            _load(kind, raw)
        except Exception:
            logger.exception("score.model_load_failed", extra={"kind": kind})
        finally:
            connection.close()  # this thread's own connection
            with _lock:
                _loading.discard(kind)

    threading.Thread(target=run, name=f"model-loader-{kind}", daemon=True).start()


def _model(kind: str, version: str | None) -> ServingModel | None:
    if not version:
        return None
    known = _loaded.get(version)
    if known is not None:
        return known
    artifact = model_artifact_read(version=version)
    if artifact is None:
        return None
    loaded = ServingModel(version, _loaders[kind](artifact))
    with _lock:
        _loaded[version] = loaded
        evictable = [kept for kept in _loaded if kept not in _experiment_versions]
        for oldest in evictable[: max(0, len(evictable) - LOADED_VERSIONS_KEPT * max(1, len(_loaders)))]:
            _loaded.pop(oldest)
    return loaded


def _load(kind: str, raw: bytes) -> None:
    snapshot = orjson.loads(raw)
    if time.monotonic() < _failed_until.get(raw, 0.0):
        return
    generation = _generation[0]
    started = time.perf_counter()
    active = _model(kind, snapshot.get("active"))
    canary = _model(kind, snapshot.get("canary"))
    if (snapshot.get("active") and active is None) or (snapshot.get("canary") and canary is None):
        # Not in the database (yet, e.g. a replica lagging): keep serving what we have, try again shortly.
        _failed_until[raw] = time.monotonic() + LOAD_RETRY_SECONDS
        logger.warning("score.model_missing", extra={"kind": kind, "snapshot": raw.decode()})
        return
    if generation != _generation[0]:
        return
    # One assignment: a request sees either the old set or the new one, never a mix.
    _serving[kind] = KindServing(raw, active, canary, int(snapshot.get("canary_percent") or 0))
    logger.info(
        "score.models_loaded",
        extra={
            "kind": kind,
            "active": active.version if active else None,
            "canary": canary.version if canary else None,
            "seconds": round(time.perf_counter() - started, 4),
        },
    )
