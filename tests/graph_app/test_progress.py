"""Long training steps say how far they are and how long they should still take."""

from __future__ import annotations

import logging

from graph_app.progress import Progress


def test_each_line_says_how_much_is_done_and_estimates_the_time_left(caplog):
    caplog.set_level(logging.INFO, logger="graph_app.progress")
    progress = Progress("users published", total=4, every_seconds=0)

    progress.advance()
    progress.advance(2)
    progress.finish()

    lines = [record for record in caplog.records if record.name == "graph_app.progress"]
    assert [record.done for record in lines] == [1, 3, 3]
    assert [record.percent for record in lines] == [25.0, 75.0, 75.0]
    assert lines[0].eta_s >= 0 and "s left" in lines[0].getMessage()
    assert "done in" in lines[-1].getMessage() and not hasattr(lines[-1], "eta_s")


def test_a_short_step_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="graph_app.progress")
    progress = Progress("quick", total=None)

    progress.advance(10)
    progress.finish()

    assert not [record for record in caplog.records if record.name == "graph_app.progress"]
