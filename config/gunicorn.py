"""gunicorn settings used by `make run`: metrics from every worker are merged through PROMETHEUS_MULTIPROC_DIR."""

import ctypes
import os
import signal
import sys

from prometheus_client import multiprocess

PR_SET_PDEATHSIG = 1


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Before the first request: see `surface_app.serving.warm_up.serving_warm_up`."""
    from surface_app.serving.warm_up import serving_warm_up

    serving_warm_up()
    _stop_listening_when_the_master_dies(worker)


def _stop_listening_when_the_master_dies(worker):  # type: ignore[no-untyped-def]
    """A SIGKILLed master leaves its worker holding their listening socket, idle in select() for up to the worker
    timeout, and the connections the kernel hands to that socket are reset when the supervisor kills the worker.
    Woken by Linux's parent-death signal, the worker serves what is queued, finds its parent gone, and exits
    (gunicorn's own loop); `worker_exit` then closes the socket at once, so that the other web process, on the same
    port, gets every new connection."""
    if not sys.platform.startswith("linux"):
        return
    gunicorn_handler = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
        if os.getppid() == worker.ppid:  # from the live master: its graceful stop
            gunicorn_handler(signum, frame)
        # Otherwise the signal has only woken the worker's select(), which is enough.

    signal.signal(signal.SIGTERM, on_sigterm)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    """Before the interpreter's slow shutdown: a queue on this socket would be reset when it closes."""
    for listener in worker.sockets:
        listener.close()


# `make run` starts two masters on one port (SO_REUSEPORT): the kernel spreads the connections between them, and
# while one is restarted the other accepts them all.
reuse_port = True
