"""The JSON bounds every API body is held to (personalization.validation.json_limits_check)."""

from __future__ import annotations

import pytest

from personalization.validation import JSON_MAX_DEPTH, JsonLimitExceeded, json_limits_check


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def test_values_within_the_bounds_pass():
    json_limits_check({"items": [nested(JSON_MAX_DEPTH - 2)], "n": 2**63 - 1, "m": -(2**63), "f": 1.5, "b": True})


def test_nesting_one_level_too_deep_is_refused_naming_where():
    with pytest.raises(JsonLimitExceeded) as refused:
        json_limits_check({"attributes": nested(JSON_MAX_DEPTH)})

    path = "attributes" + ".a" * (JSON_MAX_DEPTH - 1)
    assert refused.value.errors == {path: [f"Must not be nested deeper than {JSON_MAX_DEPTH} levels."]}


def test_ten_thousand_levels_are_walked_without_recursion():
    with pytest.raises(JsonLimitExceeded):
        json_limits_check([nested(10_000)])


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 10**30])
def test_integers_beyond_64_bits_are_refused_naming_the_value(number):
    with pytest.raises(JsonLimitExceeded) as refused:
        json_limits_check({"traits": {"sizes": [1, number]}})

    assert refused.value.errors == {"traits.sizes[1]": ["Integers must fit in 64 bits (signed)."]}


def test_a_number_that_is_not_finite_is_refused():
    with pytest.raises(JsonLimitExceeded) as refused:
        json_limits_check({"price": float("inf")})

    assert refused.value.errors == {"price": ["Numbers must be finite."]}


def test_a_long_path_is_shortened_in_the_field_name():
    with pytest.raises(JsonLimitExceeded) as refused:
        json_limits_check({"k" * 500: 2**64})

    (field,) = refused.value.errors
    assert len(field) == 200 and field.endswith("…")
