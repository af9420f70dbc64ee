"""What a serving process (a gunicorn worker for the API, uvicorn for the WebSockets) loads before its first
request."""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def serving_warm_up() -> None:
    """Retrieval threads with open database connections, the serving models, the catalog facts and the rules
    snapshot in memory before the first request, whose slate would otherwise miss every deadline. Then what was
    loaded is frozen out of the garbage collector's reach: a full collection over it stalled every request of the
    process for tens of milliseconds a few times a minute. Young objects are collected less often too
    (`SERVING_GC_THRESHOLD`): a request's candidates, features and replies die with it. A store that is down now
    degrades requests later: it must not stop the process."""
    from graph_app.interface import catalog_facts_preload
    from personalization import redis_keys
    from personalization.redis_client import get_redis
    from scoring_app.interface import models_refresh, retrieval_warm_up  # and registers the loaders
    from surface_app.serving.rules import snapshot_observe

    try:
        retrieval_warm_up()
        models_refresh()
        catalog_facts_preload()
        version = get_redis().get(redis_keys.SURFACE_CONFIG_VERSION)
        snapshot_observe(version if isinstance(version, bytes) else None)
    except Exception:
        logger.exception("serving.warm_up_failed")
    serving_gc_configure()


def serving_gc_configure() -> None:
    """The garbage collector as a serving process wants it once loaded (see `serving_warm_up`)."""
    from django.conf import settings

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.SERVING_GC_THRESHOLD, older, oldest)
