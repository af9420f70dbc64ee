"""ASGI entry point: WebSockets (Channels). The REST API is served by gunicorn (WSGI), which measured about
3.5x faster for the same Django views on this machine (shared/docs/performance-notes.md); this process still
answers HTTP so that a single-process deployment works."""

import asyncio
import gc
import logging
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from surface_app.routing import websocket_urlpatterns  # noqa: E402


def _warm_up() -> None:
    """As gunicorn's post_worker_init does for the API: retrieval threads with open database connections, the
    serving models and the rules snapshot in memory before the first socket, whose slate would otherwise miss
    every deadline. Then what was loaded is frozen out of the garbage collector's reach: a full collection over
    it stalled every socket of the process for about 70 ms a few times a minute."""
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
    except Exception:  # a store that is down now degrades slates later, it must not stop the server
        logging.getLogger(__name__).exception("asgi.warm_up_failed")
    gc.collect()
    gc.freeze()


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server's start and stop (uvicorn); the warm-up runs in a thread, Django refuses database work on the
    event loop's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.to_thread(_warm_up)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        "lifespan": lifespan,
    }
)
