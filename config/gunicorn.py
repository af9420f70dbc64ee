"""gunicorn settings used by `make run`: metrics from every worker are merged through PROMETHEUS_MULTIPROC_DIR."""

from prometheus_client import multiprocess


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Before the first request: retrieval threads with open database connections, serving models in memory."""
    from scoring_app.engine import retrieval, scoring  # noqa: F401 (registers the model loaders)
    from scoring_app.engine.registry import models_refresh

    try:
        retrieval.retrieval_warm_up()
        models_refresh()
    except Exception:  # a store that is down now degrades requests later, it must not stop the worker
        worker.log.exception("Warm-up failed; serving will load lazily")
