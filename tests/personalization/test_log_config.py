"""Log lines: structured, with their `extra` fields and the request or task id; routine tasks' lines at DEBUG."""

from __future__ import annotations

import io
import json
import logging

import pytest

from personalization.log_config import (
    RoutineTaskFilter,
    context_clear,
    request_context_bind,
    request_id_for,
    structured_formatter,
    task_context_bind,
)


@pytest.fixture
def printed():
    """A logger printing through the project's formatter into a buffer: (logger, switch format, read lines)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logger = logging.getLogger("tests.log_config")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, handler.setFormatter, lambda: buffer.getvalue().splitlines()
    logger.removeHandler(handler)
    logger.propagate = True
    context_clear()


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("req-2026.12.06:web-1_7", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        (None, False),
        ("two words", False),
        ("id\r\nSet-Cookie: a=b", False),
        ("<script>", False),
    ],
)
def test_an_incoming_request_id_is_kept_only_when_well_formed(incoming, kept):
    request_id = request_id_for(incoming)

    assert (request_id == incoming) is kept
    if not kept:
        assert len(request_id) == 32 and int(request_id, 16) >= 0


def test_json_lines_carry_the_extra_fields_and_the_request_id(printed):
    logger, formatter_set, lines = printed
    formatter_set(structured_formatter("json"))
    request_id = request_context_bind("abc-123")

    logger.info("signals.segment_ingested", extra={"accepted": 3, "source": "web"})
    logger.warning("Not Found: %s", "/nope", extra={"status_code": 404})

    first, second = (json.loads(line) for line in lines())
    assert request_id == "abc-123"
    assert first == {
        "event": "signals.segment_ingested",
        "level": "info",
        "logger": "tests.log_config",
        "request_id": "abc-123",
        "accepted": 3,
        "source": "web",
        "timestamp": first["timestamp"],
    }
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["level"], second["status_code"]) == ("Not Found: /nope", "warning", 404)


def test_a_task_context_replaces_the_request_one_and_exceptions_are_one_json_line(printed):
    logger, formatter_set, lines = printed
    formatter_set(structured_formatter("json"))
    request_context_bind(None)
    task_context_bind(task_id="5f0c-task", task_name="signals.popularity_refresh")

    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("score.ranker_failed", extra={"version": "ranker-7"})

    (line,) = lines()
    record = json.loads(line)
    assert "request_id" not in record
    assert (record["task_id"], record["task"]) == ("5f0c-task", "signals.popularity_refresh")
    assert record["version"] == "ranker-7"
    assert record["exception"].startswith("Traceback") and "ValueError: bad value" in record["exception"]


def test_console_lines_are_key_value_pairs(printed):
    logger, formatter_set, lines = printed
    formatter_set(structured_formatter("console"))
    request_context_bind("abc-123")

    logger.info("graph.embeddings_trained", extra={"items": 600, "seconds": 1.5})

    (line,) = lines()
    assert "[info     ] graph.embeddings_trained" in line
    assert line.endswith("[tests.log_config] items=600 request_id=abc-123 seconds=1.5")


def test_fields_that_repeat_the_message_are_left_out(printed):
    logger, formatter_set, lines = printed
    formatter_set(structured_formatter("json"))
    celery = logging.getLogger("celery.app.trace")
    celery.addHandler(logger.handlers[0])
    celery.propagate = False
    context = {"name": "signals.popularity_refresh", "id": "7", "runtime": 0.1, "return_value": "{}"}

    try:
        celery.info("Task %(name)s[%(id)s] succeeded in %(runtime)ss", context, extra={"data": context})
        logger.info("Started server process [%d]", 42, extra={"color_message": "Started server process [\x1b[36m%d]"})
    finally:
        celery.removeHandler(logger.handlers[0])
        celery.propagate = True

    celery_line, uvicorn_line = (json.loads(line) for line in lines())
    assert celery_line["event"] == "Task signals.popularity_refresh[7] succeeded in 0.1s"
    assert "data" not in celery_line and "color_message" not in uvicorn_line
    assert uvicorn_line["event"] == "Started server process [42]"


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="json or console"):
        structured_formatter("xml")


BEAT = "Scheduler: Sending due task %s (%s)"
SUCCEEDED = "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"
RECEIVED = "Task %(name)s[%(id)s] received"


def _celery_record(logger: str, message: str, args: object, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(logger, level, __file__, 1, message, args, None)  # type: ignore[arg-type]


def _task(name: str) -> dict[str, object]:
    return {"name": name, "id": "1", "runtime": 0.01, "return_value": "{}"}


@pytest.mark.parametrize(
    ("record", "demoted"),
    [
        (_celery_record("celery.beat", BEAT, ("Drain event streams", "signals.events_drain")), True),
        (_celery_record("celery.beat", BEAT, ("Train embeddings", "graph.embeddings_train")), False),
        (_celery_record("celery.app.trace", SUCCEEDED, _task("signals.events_drain")), True),
        (_celery_record("celery.worker.strategy", RECEIVED, _task("signals.events_drain")), True),
        (_celery_record("celery.app.trace", SUCCEEDED, _task("signals.popularity_refresh")), False),
        # A failure of the routine task stays as loud as Celery made it.
        (_celery_record("celery.app.trace", "Task %(name)s[%(id)s] raised", _task("signals.events_drain"), 40), False),
    ],
)
def test_routine_tasks_lines_go_down_to_debug(record, demoted):
    routine = RoutineTaskFilter(tasks=["signals.events_drain"])
    level = record.levelno

    shown = routine.filter(record)

    # At INFO (the loggers' level here), a demoted line is not printed at all.
    assert shown is (not demoted or logging.getLogger(record.name).isEnabledFor(logging.DEBUG))
    assert record.levelno == (logging.DEBUG if demoted else level)
