"""A small shop with learnable behaviour: each shopper buys mostly in one favourite category."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal

from django.utils import timezone

from graph_app.models import Item
from graph_app.online import catalog_online_rebuild
from graph_app.services import EntityRef, ItemInput, item_upsert
from signals_app.consumer import events_drain_all
from signals_app.services import events_ingest

CATEGORIES = ("mugs", "bags", "lights")
ITEMS_PER_CATEGORY = 12


def item_ids() -> list[str]:
    return [f"{category}-{n}" for category in CATEGORIES for n in range(ITEMS_PER_CATEGORY)]


def shop_build(*, users: int = 30, events_per_user: int = 10, seed: int = 7) -> list[str]:
    """Items through the real upsert service (content embeddings, entities) and a log of past events."""
    for item_id in item_ids():
        category = item_id.split("-")[0]
        item_upsert(
            data=ItemInput(
                external_id=item_id, title=f"{category} {item_id}", category=category, price=Decimal("10.00"),
                entities=(EntityRef(kind="brand", external_id=f"{category}-maker"),),
            )
        )  # fmt: skip
    # Items were on sale before the history began; the ingest needs their catalog facts in Redis (published after
    # commit in production, which a test's transaction never reaches).
    Item.objects.update(created_at=timezone.now() - timedelta(days=60))
    catalog_online_rebuild()
    generator = random.Random(seed)
    start = timezone.now() - timedelta(hours=40)
    events = []
    for user in range(users):
        favourite = CATEGORIES[user % len(CATEGORIES)]
        for number in range(events_per_user):
            category = favourite if generator.random() < 0.8 else generator.choice(CATEGORIES)
            events.append(
                {
                    "event_id": f"shop-{user}-{number}",
                    "type": generator.choice(["view", "view", "click", "purchase"]),
                    "user_id": f"user-{user}", "item_id": f"{category}-{generator.randrange(ITEMS_PER_CATEGORY)}",
                    # Shoppers interleaved in time (they come back), each event of one after the one before.
                    "timestamp": (start + timedelta(minutes=number * users * 2 + user * 2)).isoformat(),
                }
            )  # fmt: skip
    # Through the real ingest (online state) and the real consumer (the log): both materializations agree.
    for offset in range(0, len(events), 500):
        events_ingest(raw_events=events[offset : offset + 500])
    while events_drain_all().read:
        pass
    return [f"user-{user}" for user in range(users)]
