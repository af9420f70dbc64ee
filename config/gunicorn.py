"""gunicorn settings used by `make run`: metrics from every worker are merged through PROMETHEUS_MULTIPROC_DIR."""

from prometheus_client import multiprocess


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Before the first request: retrieval threads with open database connections, serving models and the rules
    snapshot in memory; then what was loaded is moved out of the garbage collector's reach (a full collection
    over it stalls a request for tens of milliseconds)."""
    import gc

    from personalization.redis_client import get_redis
    from scoring_app.engine import retrieval, scoring  # noqa: F401 (registers the model loaders)
    from scoring_app.engine.registry import models_refresh
    from surface_app.serving.rules import snapshot_observe
    from surface_app.serving.slates import CONFIG_VERSION_KEY

    try:
        retrieval.retrieval_warm_up()
        models_refresh()
        version = get_redis().get(CONFIG_VERSION_KEY)
        snapshot_observe(version if isinstance(version, bytes) else None)
    except Exception:  # a store that is down now degrades requests later, it must not stop the worker
        worker.log.exception("Warm-up failed; serving will load lazily")
    gc.collect()
    gc.freeze()
