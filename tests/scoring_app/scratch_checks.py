"""What every evaluation command must leave behind: nothing in the live stores, no scratch database."""

from __future__ import annotations

from django.db import connection

from graph_app.models import Item
from graph_app.state.models import Event
from operations.evaluation.scratch import SCRATCH_SUFFIX


def assert_live_stores_untouched(*, live_database: str, clean_redis, listener) -> None:
    """The live database and Redis database saw nothing, no live channel-layer group heard a message (`listener`
    subscribed before the run), and the scratch database is gone."""
    assert connection.settings_dict["NAME"] == live_database
    assert not Item.objects.exists()
    assert not Event.objects.exists()
    assert clean_redis.dbsize() == 0
    heard = list(iter(lambda: listener.get_message(timeout=0.2), None))
    assert [message for message in heard if message["type"] == "pmessage"] == []
    listener.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [live_database + SCRATCH_SUFFIX])
        assert cursor.fetchone()[0] == 0
