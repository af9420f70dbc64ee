import pytest

from personalization import process_caches
from personalization.process_caches import process_cache, process_cache_names, process_caches_reset


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(process_caches, "_resets", {})


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
