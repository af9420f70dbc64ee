"""The core seam for live updates: synchronous delivery in subscription order, catalog batches coalesced."""

from __future__ import annotations

import pytest

from personalization import live_updates
from personalization.live_updates import CatalogChanged, UsersChanged, catalog_batch, catalog_changed, users_changed


@pytest.fixture
def received(monkeypatch):
    """The messages delivered, with the seam's handlers swapped for a recorder (Surface's are restored after)."""
    got: list[object] = []
    monkeypatch.setattr(live_updates, "_handlers", {UsersChanged: [], CatalogChanged: []})
    live_updates.subscribe(UsersChanged, got.append)
    live_updates.subscribe(CatalogChanged, got.append)
    return got


def test_a_message_is_delivered_at_once_to_every_subscriber_in_order(monkeypatch):
    order: list[str] = []
    monkeypatch.setattr(live_updates, "_handlers", {UsersChanged: [], CatalogChanged: []})
    live_updates.subscribe(UsersChanged, lambda message: order.append("first"))
    live_updates.subscribe(UsersChanged, lambda message: order.append("second"))

    users_changed(user_keys=["u1"])

    assert order == ["first", "second"]


def test_subscribing_twice_delivers_once(received):
    live_updates.subscribe(UsersChanged, received.append)

    users_changed(user_keys={"u1", "u2"})

    assert received == [UsersChanged(user_keys=frozenset({"u1", "u2"}))]


def test_nothing_changed_is_not_published(received):
    users_changed(user_keys=[])
    catalog_changed()

    assert received == []


def test_a_catalog_batch_is_one_message_at_its_end_also_when_nested(received):
    with catalog_batch():
        catalog_changed(changed=["a"])
        with catalog_batch():
            catalog_changed(appeared=["b"])
        assert received == []
        catalog_changed(changed=["c"], appeared=["b"])

    assert received == [CatalogChanged(changed=frozenset({"a", "c"}), appeared=frozenset({"b"}))]


def test_a_batch_cut_short_by_an_error_still_sends_what_it_collected(received):
    with pytest.raises(RuntimeError), catalog_batch():
        catalog_changed(changed=["a"])
        raise RuntimeError

    assert received == [CatalogChanged(changed=frozenset({"a"}))]
