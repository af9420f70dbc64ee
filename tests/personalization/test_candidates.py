from personalization.candidates import Candidate, candidate_new


def test_a_candidate_has_the_later_layers_defaults_until_they_fill_them():
    candidate = Candidate("mug-1", 0.5, "similar", "Similar to items you showed interest in")

    assert (candidate.sources, candidate.propensity, candidate.entity_payload) == ((), None, None)
    assert (candidate.category, candidate.entities, candidate.rules, candidate.pinned_slot) == ("", (), (), None)

    candidate.propensity, candidate.rules = 0.25, ["boost:Mugs"]

    assert (candidate.propensity, candidate.rules) == (0.25, ["boost:Mugs"])
    assert Candidate("mug-2", 0.1, "popular", "").rules == ()  # a default is never shared state


def test_a_copy_is_filled_in_apart_from_its_original():
    original = Candidate("mug-1", 0.5, "similar", "", ("similar",), category="mugs")

    copy = original.copied()
    copy.score, copy.campaign = 0.9, "spring"

    assert copy == Candidate("mug-1", 0.9, "similar", "", ("similar",), category="mugs", campaign="spring")
    assert (original.score, original.campaign, original.category) == (0.5, "", "mugs")
    assert original != copy


def test_what_retrieval_gave_reads_by_name():
    candidate = Candidate("mug-1", 0.5, "graph", "Because you like Retrospot", ("graph", "similar"), 0.3)

    assert candidate.retrieved() == {
        "item_id": "mug-1", "score": 0.5, "source": "graph", "explanation": "Because you like Retrospot",
        "sources": ("graph", "similar"),
    }  # fmt: skip


def test_the_hot_loops_constructor_builds_the_same_candidate():
    built = candidate_new("mug-1", 0.5, "similar", "Similar to items you showed interest in", ("similar",))

    assert built == Candidate("mug-1", 0.5, "similar", "Similar to items you showed interest in", ("similar",))
    assert (built.propensity, built.rules) == (None, ())
