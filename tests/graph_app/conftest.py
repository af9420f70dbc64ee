from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from django.conf import settings

from surface_app.services import SHELVES_ALL_GROUP


@pytest.fixture
def shelves(clean_redis):
    """The messages the live shelves receive (the channel layer's group channel)."""
    pubsub = clean_redis.pubsub()
    pubsub.subscribe(f"{settings.CHANNEL_LAYERS['default']['CONFIG']['prefix']}__group__{SHELVES_ALL_GROUP}")
    pubsub.get_message(timeout=1)  # the subscription's confirmation

    def messages() -> list[dict]:
        received = []
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            received.append(get_channel_layer().deserialize(message["data"]))
        return received

    yield messages
    pubsub.close()
