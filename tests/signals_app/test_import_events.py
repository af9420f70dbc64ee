from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from graph_app.models import Shopper
from graph_app.state.log import event_log_append
from graph_app.state.models import Event, EventId
from graph_app.state.records import EventInput, EventRecord

pytestmark = pytest.mark.django_db

HEADER = "event_id,type,user_id,session_id,item_id,timestamp,placement,request_id,slot,value,context\n"
MARCH_5 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)


def run(path: Path, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("import_events", str(path), *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def stored(*fields: str) -> list[tuple[object, ...]]:
    return list(
        Event.objects.order_by("event_id").values_list(
            *(fields or ("event_id", "type", "user_id", "session_id", "item_id", "occurred_at"))
        )
    )


def rejects_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def jsonl(*events: object) -> str:
    return "".join((event if isinstance(event, str) else json.dumps(event)) + "\n" for event in events)


def test_csv_import_stores_valid_rows_and_reports_bad_ones_by_line_and_field(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text(
        HEADER
        + 'c1,purchase,u1,,sku-1,2024-03-05T10:00:00Z,home,req-1,2,19.5,"{""device"": ""ios, tablet""}"\n'
        + "c2,view,,s-1,sku-2,1709632800,,,,,\n"  # Unix seconds: 2024-03-05 10:00 UTC
        + "c3,teleport,u1,,sku-1,2024-03-05T10:00:00Z,,,,,\n"
        + "c4,view,u2,,sku-1,,,,,,\n"
        + "c5,view,u2,,sku-1,2024-03-05T10:00:00Z,,,first,,{not json}\n"
        + "c6,view,u2\n"
        + "c7,search,u3,,,2024-04-01T00:00:00+02:00,,,,,\n"
    )
    rejects = tmp_path / "rejects.jsonl"

    out, _ = run(source, "--rejects", str(rejects), "--no-progress")

    assert stored() == [
        ("c1", "purchase", "u1", "", "sku-1", MARCH_5),
        ("c2", "view", "", "s-1", "sku-2", MARCH_5),
        ("c7", "search", "u3", "", "", datetime(2024, 3, 31, 22, 0, tzinfo=UTC)),
    ]
    assert stored("event_id", "placement", "request_id", "slot", "value", "context")[0] == (
        "c1",
        "home",
        "req-1",
        2,
        19.5,
        {"device": "ios, tablet"},
    )
    assert sorted(EventId.objects.values_list("event_id", flat=True)) == ["c1", "c2", "c7"]
    assert sorted(Shopper.objects.values_list("external_id", flat=True)) == ["u1", "u3"]
    assert out.splitlines() == [
        "Read 7, imported 3, duplicates 0, rejected 4 in " + out.split(" in ")[1].splitlines()[0],
        "Partitions created: signals_app_event_p202403.",
        "First errors:",
        "  line 4: type: Unknown event type 'teleport'.",
        "  line 5: timestamp: Required in an import (only the live API may default it to now).",
        "  line 6: context: Not valid JSON.",
        "  line 6: slot: Must be a whole number from 0 to 10000.",
        "  line 7: event: Expected 11 columns, found 3.",
        f"Rejected rows written to {rejects}.",
        "Done: the whole file is in the log.",
    ]
    assert rejects_of(rejects) == [
        {"line": 4, "errors": [{"field": "type", "message": "Unknown event type 'teleport'."}],
         "row": "c3,teleport,u1,,sku-1,2024-03-05T10:00:00Z,,,,,"},
        {"line": 5, "errors": [{"field": "timestamp",
                                "message": "Required in an import (only the live API may default it to now)."}],
         "row": "c4,view,u2,,sku-1,,,,,,"},
        {"line": 6, "errors": [{"field": "context", "message": "Not valid JSON."},
                               {"field": "slot", "message": "Must be a whole number from 0 to 10000."}],
         "row": "c5,view,u2,,sku-1,2024-03-05T10:00:00Z,,,first,,{not json}"},
        {"line": 7, "errors": [{"field": "event", "message": "Expected 11 columns, found 3."}], "row": "c6,view,u2"},
    ]  # fmt: skip


def test_csv_line_numbers_count_physical_lines_when_a_cell_spans_several(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text(
        "event_id,type,user_id,item_id,timestamp,context\n"
        'm1,view,u1,sku-1,2024-03-05T10:00:00Z,"{""note"": ""two"",\n ""lines"": 2}"\n'
        "m2,view,u1,,2024-03-05T10:00:00Z,\n"
    )

    out, _ = run(source, "--no-progress")

    assert stored("event_id", "context") == [("m1", {"note": "two", "lines": 2})]
    assert "  line 4: item_id: Required for 'view' events." in out.splitlines()


def test_jsonl_import_rejects_bad_lines_and_skips_ids_already_in_the_log(tmp_path):
    event_log_append(
        records=[
            EventRecord(
                event=EventInput("j1", "view", "u1", "", "sku-1", "", "", None, None, {}, MARCH_5),
                received_at=MARCH_5,
            )
        ]
    )
    source = tmp_path / "events.ndjson"
    source.write_text(
        jsonl(
            {"event_id": "j1", "type": "view", "user_id": "u1", "item_id": "sku-1", "timestamp": MARCH_5.isoformat()},
            {"event_id": "j2", "type": "click", "user_id": 42, "item_id": "sku-2", "timestamp": 1709632800,
             "slot": 4, "context": {"page": "/"}},
            "",
            "{not json",
            "[1, 2]",
            {"event_id": "j3", "type": "view", "item_id": "sku-3", "timestamp": MARCH_5.isoformat()},
            {"event_id": "j2", "type": "view", "user_id": "u9", "item_id": "sku-9", "timestamp": 1709632800},
        )
    )  # fmt: skip
    rejects = tmp_path / "rejects.jsonl"

    out, _ = run(source, "--rejects", str(rejects), "--no-progress")

    assert stored("event_id", "type", "user_id", "item_id", "slot", "context") == [
        ("j1", "view", "u1", "sku-1", None, {}),
        ("j2", "click", "42", "sku-2", 4, {"page": "/"}),
    ]
    assert out.splitlines()[0].startswith("Read 6, imported 1, duplicates 2, rejected 3 in ")
    assert out.splitlines()[1:6] == [
        "Partitions created: signals_app_event_p202403.",
        "First errors:",
        "  line 4: event: Not valid JSON: unexpected character, expected a string key: line 1 column 2 (char 1).",
        "  line 5: event: Must be a JSON object.",
        "  line 6: user_id: Either user_id or session_id is required.",
    ]
    assert [(reject["line"], reject["row"]) for reject in rejects_of(rejects)] == [
        (4, "{not json"),
        (5, "[1, 2]"),
        (6, '{"event_id": "j3", "type": "view", "item_id": "sku-3", "timestamp": "2024-03-05T10:00:00+00:00"}'),
    ]


def test_an_interrupted_import_resumes_after_its_last_committed_batch(tmp_path):
    source = tmp_path / "events.jsonl"
    lines = [
        {"event_id": f"r{index}", "type": "view", "user_id": f"u{index}", "item_id": "sku-1",
         "timestamp": 1709632800 + index}
        for index in range(7)
    ]  # fmt: skip
    lines[3] = {"event_id": "bad", "type": "view", "user_id": "u3", "item_id": "sku-1"}  # no timestamp
    source.write_text(jsonl(*lines))
    rejects = tmp_path / "rejects.jsonl"

    first, _ = run(source, "--batch-size", "2", "--max-batches", "2", "--rejects", str(rejects), "--no-progress")

    checkpoint = json.loads((tmp_path / "events.jsonl.import-checkpoint.json").read_text())
    assert (checkpoint["line"], checkpoint["offset"], checkpoint["finished"]) == (
        4,
        len(jsonl(*lines[:4]).encode()),
        False,
    )
    assert [row[0] for row in stored()] == ["r0", "r1", "r2"]
    assert first.splitlines()[-1] == (
        f"Stopped after line 4 (2 batches); run again to resume (checkpoint: {source}.import-checkpoint.json)."
    )

    second, _ = run(source, "--batch-size", "2", "--rejects", str(rejects), "--no-progress")

    assert [row[0] for row in stored()] == ["r0", "r1", "r2", "r4", "r5", "r6"]
    assert Event.objects.count() == EventId.objects.count() == 6
    assert second.splitlines()[0] == "Resumed after line 4."
    assert second.splitlines()[1].startswith("Read 3, imported 3, duplicates 0, rejected 0 in ")
    assert second.splitlines()[2] == "Since the start of this file: read 7, imported 6, duplicates 0, rejected 1."
    assert [reject["line"] for reject in rejects_of(rejects)] == [4]

    third, _ = run(source, "--no-progress")  # finished: nothing left to read

    assert third.splitlines()[1].startswith("Read 0, imported 0, duplicates 0, rejected 0 in ")
    assert Event.objects.count() == 6


def test_a_batch_committed_but_not_checkpointed_is_read_again_as_duplicates(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text(
        HEADER
        + "k1,view,u1,,sku-1,2024-03-05T10:00:00Z,,,,,\n"
        + "k2,view,u1,,,2024-03-05T10:00:00Z,,,,,\n"
        + "k3,view,u1,,sku-1,2024-03-05T10:00:00Z,,,,,\n"
    )
    rejects = tmp_path / "rejects.jsonl"
    run(source, "--batch-size", "1", "--max-batches", "1", "--rejects", str(rejects), "--no-progress")
    checkpoint_path = tmp_path / "events.csv.import-checkpoint.json"
    after_first_batch = checkpoint_path.read_text()
    run(source, "--batch-size", "1", "--max-batches", "2", "--rejects", str(rejects), "--no-progress")
    # As if the process died after committing batches 2 and 3 but before writing their checkpoint.
    checkpoint_path.write_text(after_first_batch)

    out, _ = run(source, "--batch-size", "1", "--rejects", str(rejects), "--no-progress")

    assert [row[0] for row in stored()] == ["k1", "k3"]
    assert out.splitlines()[1].startswith("Read 2, imported 0, duplicates 1, rejected 1 in ")
    assert [reject["line"] for reject in rejects_of(rejects)] == [3]  # written once, not once per attempt


def test_gzipped_csv_and_jsonl_are_read_and_the_progress_bar_goes_to_stderr(tmp_path):
    csv_source = tmp_path / "events.csv.gz"
    csv_source.write_bytes(gzip.compress((HEADER + "g1,view,u1,,sku-1,2024-03-05T10:00:00Z,,,,,\n").encode()))
    jsonl_source = tmp_path / "events.jsonl.gz"
    jsonl_source.write_bytes(
        gzip.compress(
            jsonl({"event_id": "g2", "type": "view", "user_id": "u1", "item_id": "sku-1", "timestamp": 1709632800})
            .encode()
        )
    )  # fmt: skip

    csv_out, csv_err = run(csv_source)
    jsonl_out, _ = run(jsonl_source)

    assert stored() == [("g1", "view", "u1", "", "sku-1", MARCH_5), ("g2", "view", "u1", "", "sku-1", MARCH_5)]
    assert "events.csv.gz" in csv_err  # tqdm's bar
    assert csv_out.splitlines()[0].startswith("Read 1, imported 1, duplicates 0, rejected 0 in ")
    assert jsonl_out.splitlines()[-1] == "Done: the whole file is in the log."


def test_resuming_a_gzipped_file_continues_from_the_decompressed_offset(tmp_path):
    source = tmp_path / "events.jsonl.gz"
    events = [
        {"event_id": f"z{index}", "type": "view", "user_id": "u1", "item_id": "sku-1", "timestamp": 1709632800}
        for index in range(5)
    ]
    source.write_bytes(gzip.compress(jsonl(*events).encode()))

    run(source, "--batch-size", "2", "--max-batches", "1", "--no-progress")
    out, _ = run(source, "--batch-size", "2", "--no-progress")

    assert [row[0] for row in stored()] == ["z0", "z1", "z2", "z3", "z4"]
    assert out.splitlines()[1].startswith("Read 3, imported 3, duplicates 0, rejected 0 in ")


def test_format_option_checkpoint_of_another_file_and_restart(tmp_path):
    source = tmp_path / "export.txt"
    source.write_text(jsonl({"event_id": "f1", "type": "view", "user_id": "u1", "item_id": "a", "timestamp": 1}))
    checkpoint = tmp_path / "state.json"

    with pytest.raises(CommandError, match=r"Cannot tell the format of export\.txt"):
        run(source, "--no-progress")
    run(source, "--format", "jsonl", "--checkpoint", str(checkpoint), "--no-progress")
    source.write_text(jsonl({"event_id": "f2", "type": "view", "user_id": "u1", "item_id": "a", "timestamp": 1}))
    with pytest.raises(CommandError, match="belongs to another file or format"):
        run(source, "--format", "jsonl", "--checkpoint", str(checkpoint), "--no-progress")
    out, _ = run(source, "--format", "jsonl", "--checkpoint", str(checkpoint), "--restart", "--no-progress")

    assert [row[0] for row in stored()] == ["f1", "f2"]
    assert out.splitlines()[0].startswith("Read 1, imported 1")


def test_a_csv_header_with_unknown_columns_is_refused_before_anything_is_stored(tmp_path):
    source = tmp_path / "events.csv"
    source.write_text("event_id,type,userid,timestamp\ne1,view,u1,1\n")

    with pytest.raises(CommandError, match="unknown: userid"):
        run(source, "--no-progress")

    assert Event.objects.count() == 0


def test_imported_history_lands_in_partitions_of_its_months(tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(
        jsonl(
            {"event_id": "h1", "type": "view", "user_id": "u1", "item_id": "a", "timestamp": "2023-12-31T23:59:59Z"},
            {"event_id": "h2", "type": "view", "user_id": "u1", "item_id": "a", "timestamp": "2024-01-01T00:00:00Z"},
        )
    )

    out, _ = run(source, "--no-progress")

    with connection.cursor() as cursor:
        cursor.execute("SELECT event_id, tableoid::regclass::text FROM signals_app_event ORDER BY event_id")
        assert cursor.fetchall() == [("h1", "signals_app_event_p202312"), ("h2", "signals_app_event_p202401")]
    assert "Partitions created: signals_app_event_p202312, signals_app_event_p202401." in out.splitlines()
