"""What the preview page shows: the two slates side by side, each item marked with what the edit changed."""

from __future__ import annotations

from dataclasses import dataclass

from graph_app.interface import item_titles
from personalization.candidates import Candidate
from surface_app.interface import PreviewResult


@dataclass(frozen=True)
class PreviewRow:
    item: Candidate
    title: str
    # What differs from the other column: "" (nothing), "new", "gone", "up", "down" or "changed" (its rules or source).
    change: str
    note: str


@dataclass(frozen=True)
class RemovedRow:
    item_id: str
    title: str
    reason: str
    change: str  # "" or "changed": removed only in this column, or for another reason


@dataclass(frozen=True)
class PreviewColumn:
    key: str  # "served" or "edited": the column's element id
    heading: str
    result: PreviewResult
    rows: list[PreviewRow]
    removed: list[RemovedRow]
    # The edited column: items served now that the edit took off the slate.
    missing: list[PreviewRow]

    @property
    def score_label(self) -> str:
        return {"ranker": "Ranker score", "bandit": "Bandit score"}.get(self.result.path, "Retrieval score")


def _edited_row(item: Candidate, title: str, served: dict[str, Candidate]) -> PreviewRow:
    before = served.get(item.item_id)
    if before is None:
        return PreviewRow(item, title, "new", "new in this slate")
    if item.slot != before.slot:
        return PreviewRow(item, title, "up" if item.slot < before.slot else "down", f"slot {before.slot} → {item.slot}")
    if item.rules != before.rules or item.source != before.source:
        return PreviewRow(item, title, "changed", "rules changed")
    return PreviewRow(item, title, "", "")


def _removed(result: PreviewResult, other: PreviewResult, titles: dict[str, str], compare: bool) -> list[RemovedRow]:
    return [
        RemovedRow(
            item_id,
            titles.get(item_id, ""),
            reason,
            "changed" if compare and other.removed.get(item_id) != reason else "",
        )
        for item_id, reason in result.removed.items()
    ]


def preview_columns(*, served: PreviewResult, edited: PreviewResult, has_edit: bool) -> list[PreviewColumn]:
    """The slate as served now and with the edit; item titles in one query for every shown id."""
    shown = [item.item_id for result in (served, edited) for item in result.items]
    shown += [item_id for result in (served, edited) for item_id in result.removed]
    titles = item_titles(external_ids=list(dict.fromkeys(shown)))
    edited_ids = {item.item_id for item in edited.items}
    served_rows = [
        PreviewRow(item, titles.get(item.item_id, ""), "gone", "not in the edited slate")
        if has_edit and item.item_id not in edited_ids
        else PreviewRow(item, titles.get(item.item_id, ""), "", "")
        for item in served.items
    ]
    before = {item.item_id: item for item in served.items}
    edited_rows = [
        _edited_row(item, titles.get(item.item_id, ""), before)
        if has_edit
        else PreviewRow(item, titles.get(item.item_id, ""), "", "")
        for item in edited.items
    ]
    missing = [row for row in served_rows if row.change == "gone"]
    return [
        PreviewColumn("served", "Served now", served, served_rows, _removed(served, edited, titles, has_edit), []),
        PreviewColumn(
            "edited", "With the unsaved edit", edited, edited_rows, _removed(edited, served, titles, has_edit), missing
        ),
    ]
