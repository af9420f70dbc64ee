"""What a serving process does before its first request."""

from __future__ import annotations

import gc

import pytest

from surface_app.serving.warm_up import serving_warm_up

pytestmark = pytest.mark.django_db


def test_warm_up_freezes_what_it_loaded_and_collects_young_objects_less_often(settings, clean_redis):
    settings.SERVING_GC_THRESHOLD = 4321
    threshold = gc.get_threshold()
    try:
        serving_warm_up()

        assert gc.get_threshold() == (4321, *threshold[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
