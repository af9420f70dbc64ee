"""ASGI entry point: WebSockets (Channels). The REST API is served by gunicorn (WSGI), which measured about
3.5x faster for the same Django views on this machine (shared/docs/performance-notes.md); this process still
answers HTTP so that a single-process deployment works."""

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from surface_app.routing import websocket_urlpatterns  # noqa: E402
from surface_app.serving.warm_up import serving_warm_up  # noqa: E402


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server's start and stop (uvicorn); the warm-up runs in a thread, Django refuses database work on the
    event loop's."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.to_thread(serving_warm_up)
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
