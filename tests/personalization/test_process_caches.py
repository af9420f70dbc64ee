import importlib
from decimal import Decimal

import pytest

from personalization import process_caches
from personalization.process_caches import process_cache, process_cache_names, process_caches_reset


@pytest.fixture
def isolated_registry():
    # Emptied in place and refilled after, before conftest's reset after each test looks for the platform's caches.
    saved = dict(process_caches._resets)
    process_caches._resets.clear()
    yield
    process_caches._resets.clear()
    process_caches._resets.update(saved)


def test_reset_empties_every_registered_cache(isolated_registry):
    first: dict[str, int] = {"a": 1}
    second: list[int] = [1, 2]

    @process_cache("test.first")
    def first_forget() -> None:
        first.clear()

    @process_cache("test.second")
    def second_forget() -> None:
        second.clear()

    assert process_cache_names() == ("test.first", "test.second")
    process_caches_reset()
    assert first == {} and second == []


def test_reset_by_name_leaves_the_others(isolated_registry):
    kept = {"a": 1}
    emptied = {"b": 2}
    process_cache("test.kept")(kept.clear)
    process_cache("test.emptied")(emptied.clear)

    process_caches_reset(["test.emptied"])

    assert kept == {"a": 1} and emptied == {}


def test_two_caches_cannot_share_a_name(isolated_registry):
    process_cache("test.same")({}.clear)
    with pytest.raises(ValueError, match=r"test\.same"):

        @process_cache("test.same")
        def other() -> None:
            pass


# Every module-level cache of the platform (issue 21), by name: the module that keeps it.
PLATFORM_CACHES = {
    "core.api_keys": "personalization.services",
    "graph.catalog_facts": "graph_app.features.online",
    "graph.catalog_import": "graph_app.catalog_import",
    "graph.custom_event_types": "graph_app.state.event_types",
    "graph.dedupe_layouts": "graph_app.state.dedupe",
    "graph.entity_keys_kept": "graph_app.catalog_bulk",
    "graph.entity_names": "graph_app.features.user_affinity",
    "graph.entity_numbers": "graph_app.features.online",
    "graph.entity_refs": "graph_app.item_rows",
    "graph.item_prices": "graph_app.item_rows",
    "graph.model_artifact_arrays": "graph_app.model_registry.selectors",
    "graph.vector_index_serving": "graph_app.item_vector_index",
    "score.popular_shared": "scoring_app.engine.retrieval",
    "score.serving_models": "scoring_app.engine.registry",
    "signal.linked_sessions": "signals_app.services",
    "surface.cap_specs": "surface_app.serving.rules",
    "surface.last_slates": "surface_app.serving.slates",
    "surface.rules_snapshot": "surface_app.serving.rules",
}


def test_every_platform_cache_is_registered_by_its_module():
    for module in set(PLATFORM_CACHES.values()):
        importlib.import_module(module)

    names = set(process_cache_names())

    assert set(PLATFORM_CACHES) <= names
    for name, module in PLATFORM_CACHES.items():
        assert process_caches._resets[name].__module__ == module


def test_resetting_every_platform_cache_empties_them():
    from graph_app import item_rows
    from signals_app import services
    from surface_app.serving import slates

    item_rows._prices["1.00"] = Decimal("1.00")
    services._linked_sessions[("u1", "s1")] = None
    slates._last_slates[("u1", "home")] = []

    process_caches_reset()

    assert item_rows._prices == {} and not services._linked_sessions and not slates._last_slates
