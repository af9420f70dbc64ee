"""How a rule's item condition meets the catalog, for the console and rule validation: how many items it matches
(counted as serving compiles it, live as a merchandiser edits) and which of its values no item has, with the
catalog's spelling when only the case differs ("Stationery" for "stationery" matches nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import OperationalError, connection, transaction
from psycopg.errors import QueryCanceled

from graph_app.interface import catalog_values, items_matching_count, items_matching_estimate
from surface_app.serving.rules import Condition

# An exact count gets this long (a scan of a million items can take longer); then a sample estimates it.
EXACT_COUNT_BUDGET_MS = 500
# The estimate counts items in this many stretches of ids spread over the catalog, this many ids in all.
SAMPLE_STRETCHES = 20
SAMPLE_IDS = 20_000
# Values a rule can name that the catalog may lack: equality, inequality and lists, on these fields.
VALUE_OPERATORS = ("eq", "ne", "in")
# The console's live check of those values gets this long per condition (the save checks them whatever it takes).
LIVE_CHECK_BUDGET_MS = 1000


@dataclass(frozen=True)
class MatchCount:
    matches: int
    total: int
    # True when both numbers are estimates (the exact count took too long).
    estimated: bool = False


@dataclass(frozen=True)
class ValueProblem:
    """A value of a condition that no item has; `suggestion` is the catalog's spelling when only the case differs."""

    field: str
    value: Any
    suggestion: Any = None

    @property
    def message(self) -> str:
        named = f"{_field_label(self.field)} {_shown(self.value)}"
        if self.suggestion is None:
            return f"No item in the catalog has {named}."
        return f"No item in the catalog has {named}: did you mean {_shown(self.suggestion)}?"


def _field_label(field: str) -> str:
    return field if field.startswith("attributes.") else {"category": "the category", "brand": "the brand"}[field]


def _shown(value: Any) -> str:
    return f"'{value}'" if isinstance(value, str) else json.dumps(value)


@contextmanager
def statement_timeout(milliseconds: int) -> Iterator[None]:
    """Queries inside get at most this long (PostgreSQL cancels them); the setting ends with the block."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        (previous,) = cursor.fetchone()
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{milliseconds}ms"])
        yield
        # Inside an outer transaction (a test's) the setting would outlive the savepoint.
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


def query_cancelled(error: OperationalError) -> bool:
    """Whether PostgreSQL cancelled the query (its statement timeout)."""
    return isinstance(error.__cause__, QueryCanceled)


def condition_match_count(*, conditions: tuple[Condition, ...], budget_ms: int = EXACT_COUNT_BUDGET_MS) -> MatchCount:
    """How many catalog items the conditions match, of how many: exact when counting takes at most `budget_ms`,
    else estimated from a sample (`condition_match_estimate`). No condition matches every item."""
    try:
        with statement_timeout(budget_ms):
            counted = items_matching_count(conditions=conditions)
    except OperationalError as error:
        if not query_cancelled(error):
            raise
        return condition_match_estimate(conditions=conditions)
    return MatchCount(matches=counted.matches, total=counted.total)


def condition_match_estimate(*, conditions: tuple[Condition, ...]) -> MatchCount:
    """An estimate for a big catalog from `SAMPLE_IDS` ids in stretches spread evenly over the id range (Graph's
    `items_matching_estimate`); a catalog within the sample's size is counted whole, exactly."""
    counted = items_matching_estimate(conditions=conditions, sample_ids=SAMPLE_IDS, stretches=SAMPLE_STRETCHES)
    return MatchCount(matches=counted.matches, total=counted.total, estimated=counted.estimated)


def _values(condition: Condition) -> list[Any]:
    values = condition.value if condition.op == "in" else [condition.value]
    return [value for value in values if isinstance(value, str | int | float | bool)]


def _attribute_name(field: str) -> str | None:
    """The attribute of `attributes.<name>` (None for a nested path, which the check leaves alone)."""
    name = field.removeprefix("attributes.")
    return name if field.startswith("attributes.") and name and "." not in name else None


def _problems(field: str, values: list[Any]) -> list[ValueProblem]:
    if field in ("category", "brand"):
        # Text columns: serving compares a number's text, as the ORM does.
        texts = [value if isinstance(value, str) else str(value) for value in values]
        missing_of = catalog_values.categories_missing if field == "category" else catalog_values.brands_missing
        spellings_of = catalog_values.category_spellings if field == "category" else catalog_values.brand_spellings
        missing = missing_of(values=texts)
        spellings = spellings_of(values=missing) if missing else []
    elif (name := _attribute_name(field)) is not None:
        missing = catalog_values.attribute_values_missing(name=name, values=values)
        spellings = catalog_values.attribute_spellings(name=name, values=missing) if missing else []
    else:
        return []
    return [ValueProblem(field, value, _spelling(value, spellings)) for value in missing]


def _spelling(value: Any, spellings: Sequence[Any]) -> Any:
    wanted = value.lower() if isinstance(value, str) else json.dumps(value)
    for spelling in spellings:
        if spelling != value and (spelling.lower() if isinstance(spelling, str) else json.dumps(spelling)) == wanted:
            return spelling
    return None


def condition_value_problems(
    *, conditions: tuple[Condition, ...], skip_attributes: Sequence[str] = (), budget_ms: int | None = None
) -> list[ValueProblem]:
    """The values of "is", "is not" and "is one of" conditions on the category, a brand or an attribute that no item
    has, exactly (such a rule matches nothing, or with "is not" everything). `skip_attributes`: names already
    reported as unknown. With `budget_ms` (the console's live check) a condition whose check takes longer is left
    out (an attribute value no item has costs a scan of the catalog); without, every one is checked (a save)."""
    problems: list[ValueProblem] = []
    for condition in conditions:
        if condition.op not in VALUE_OPERATORS or (condition.op == "in" and not isinstance(condition.value, list)):
            continue
        if _attribute_name(condition.field) in skip_attributes:
            continue
        values = _values(condition)
        if not values:
            continue
        if budget_ms is None:
            problems.extend(_problems(condition.field, values))
            continue
        try:
            with statement_timeout(budget_ms):
                problems.extend(_problems(condition.field, values))
        except OperationalError as error:
            if not query_cancelled(error):
                raise
    return problems


@dataclass(frozen=True)
class Suggestion:
    """A value the builder offers as a merchandiser types: `value` as a condition holds it, `label` what it is."""

    value: Any
    label: str = ""


def condition_suggestions(*, field: str, prefix: str = "") -> list[Suggestion]:
    """What the catalog has for a condition on `field`, starting with `prefix` (any case): categories, brands,
    attribute names (`field` "attributes", labelled with their values' kind), an attribute's values, price points;
    and for an audience, users' trait names (`field` "traits", labelled likewise)."""
    if field == "category":
        return [Suggestion(value) for value in catalog_values.categories_search(prefix=prefix)]
    if field == "brand":
        return [Suggestion(value) for value in catalog_values.brands_search(prefix=prefix)]
    if field == "attributes":
        return [Suggestion(found.name, found.kind) for found in catalog_values.attribute_names_search(prefix=prefix)]
    if field == "traits":
        return [Suggestion(found.name, found.kind) for found in catalog_values.trait_names_search(prefix=prefix)]
    if (name := _attribute_name(field)) is not None:
        return [Suggestion(value) for value in catalog_values.attribute_values_search(name=name, prefix=prefix)]
    if field == "price" and (points := catalog_values.price_points()) is not None:
        labelled = [
            (points.lowest, "lowest price"),
            (points.lower_quartile, "a quarter of items cost less"),
            (points.median, "median price"),
            (points.upper_quartile, "three quarters of items cost less"),
            (points.highest, "highest price"),
        ]
        first_labels: dict[float, str] = {}
        for value, label in labelled:
            first_labels.setdefault(value, label)  # a price that is several points keeps its first label
        return [Suggestion(value, label) for value, label in first_labels.items() if str(value).startswith(prefix)]
    return []
