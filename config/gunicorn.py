"""gunicorn settings used by `make run`: metrics from every worker are merged through PROMETHEUS_MULTIPROC_DIR."""

from prometheus_client import multiprocess


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Before the first request: see `surface_app.serving.warm_up.serving_warm_up`."""
    from surface_app.serving.warm_up import serving_warm_up

    serving_warm_up()


# `make run` starts two masters on one port (SO_REUSEPORT): the kernel spreads the connections between them, and
# while one is restarted the other accepts them all.
reuse_port = True
