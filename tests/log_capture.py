"""The log lines a test's code printed, as production prints them (JSON), through the handler LOGGING configured."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from personalization.log_config import structured_formatter


@pytest.fixture
def json_log_lines() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """Swaps the root handler's stream for a buffer and its formatter for the JSON one; call the fixture's value to
    read the lines printed so far, each parsed (so a line that is not one JSON object fails the test)."""
    (handler,) = [h for h in logging.getLogger().handlers if h.name == "console"]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    stream, formatter = handler.setStream(buffer), handler.formatter
    handler.setFormatter(structured_formatter("json"))
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    finally:
        handler.setStream(stream)
        handler.setFormatter(formatter)
