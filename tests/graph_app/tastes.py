"""Two groups of shoppers with separate tastes, for the training tests of the Graph layer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from django.utils import timezone

from tests.factories import EventFactory, ItemFactory, ShopperFactory


def two_tastes_create(*, hours_ago: Callable[[int, int], int] = lambda user, n: 10 - n) -> None:
    """Mug lovers (odd users of 12) buy mugs, garden lovers garden things, each three of the four; user `user`
    bought item `n` `hours_ago(user, n)` hours (and `user` minutes) ago."""
    for n in range(4):
        ItemFactory(external_id=f"mug-{n}", title=f"Ceramic mug {n}", category="kitchen")
        ItemFactory(external_id=f"pot-{n}", title=f"Garden plant pot {n}", category="garden")
    for user in range(12):
        group = "mug" if user % 2 else "pot"
        ShopperFactory(external_id=f"u{user}")
        for n in range(4):
            if (user + n) % 4 != 0:
                EventFactory(
                    event_id=f"e-{user}-{n}", user_id=f"u{user}", item_id=f"{group}-{n}", type="purchase",
                    occurred_at=timezone.now() - timedelta(hours=hours_ago(user, n), minutes=user),
                )  # fmt: skip
