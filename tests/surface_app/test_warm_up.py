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


def test_warm_up_reads_every_items_catalog_facts_for_the_current_version(settings, clean_redis):
    from graph_app.features.online import catalog_facts_forget, catalog_facts_preload, catalog_stock_kept
    from personalization import redis_keys
    from tests.factories import ItemFactory, unit

    ItemFactory(external_id="mug", embedding=unit(1, 0))
    ItemFactory(external_id="sold-out", in_stock=False)
    ItemFactory(external_id="bag")
    catalog_facts_forget()
    threshold = gc.get_threshold()
    try:
        serving_warm_up()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

    facts, in_stock = catalog_stock_kept(clean_redis.get(redis_keys.CATALOG_VERSION))
    assert set(facts) == {"mug", "sold-out", "bag"} and in_stock == {"mug", "bag"}
    assert len(facts["mug"][1]) == 64 * 4  # the embedding too

    settings.FEATURE_CATALOG_CACHE_ITEMS = 2  # a catalog larger than what a process keeps: half of that
    catalog_facts_forget()
    assert catalog_facts_preload() == 1
