"""What `make run` prints while it starts: numbered steps with progress and times, the banner; quiet routine tasks."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import warnings

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from graph_app.progress import Progress
from operations import startup
from operations.bootstrap import (
    BOOTSTRAP_STEPS,
    DEFAULT_SCHEDULES,
    SECONDS_SCHEDULES,
    credentials_file,
    platform_bootstrap,
)
from personalization.log_config import RoutineTaskFilter
from tests.factories import EventFactory, ItemFactory


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _search_with_fits() -> None:
    """A search whose settings each run a fit: two Progress objects, one within the other."""
    search = Progress("search: settings tried", total=2)
    for _ in range(2):
        fit = Progress("fit: iterations", total=3)
        for _ in range(3):
            fit.advance()
        fit.finish()
        search.advance()


def test_steps_off_a_terminal_are_one_line_each_without_carriage_returns():
    out = io.StringIO()
    steps = startup.StepReporter(3, stream=out)

    steps.done("Starting the servers", 4.04)
    with steps.step("Training") as outcome:
        _search_with_fits()
        outcome.note = "2 settings"
    with steps.step("Loading the demo") as outcome:
        outcome.skip("skipped: the catalog has items")

    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/3] Starting the servers ... 100% 4.0 s"
    assert lines[1].startswith("[2/3] Training ... 100% ") and lines[1].endswith(" s (2 settings)")
    assert lines[2] == "[3/3] Loading the demo ... skipped: the catalog has items"
    assert len(lines) == 3 and "\r" not in out.getvalue()


def test_steps_on_a_terminal_redraw_a_bar_of_the_outermost_progress(monkeypatch):
    monkeypatch.setattr(startup, "REDRAW_EVERY_SECONDS", 0)
    out = _Terminal()
    steps = startup.StepReporter(1, stream=out)

    with steps.step("Training"):
        _search_with_fits()

    drawn = out.getvalue().split("\r")
    # The first fit draws alone; once the search has advanced, it is the search that the bar follows.
    assert any("fit: iterations: 1 of 3" in line for line in drawn)
    first_setting = next(i for i, line in enumerate(drawn) if "search: settings tried: 1 of 2" in line)
    after_first_setting = drawn[first_setting:]
    assert not any("fit: iterations: 1 of 3" in line for line in after_first_setting)
    assert "[##########..........]  50% search: settings tried: 1 of 2" in out.getvalue()
    assert drawn[-1].startswith("[1/1] Training ... 100% ") and drawn[-1].endswith(" s\x1b[K\n")


def test_an_interrupted_step_ends_its_line_before_the_traceback():
    out = io.StringIO()
    steps = startup.StepReporter(1, stream=out)

    with pytest.raises(KeyboardInterrupt), steps.step("Training"):
        raise KeyboardInterrupt

    assert out.getvalue() == "[1/1] Training ... interrupted\n"


def test_readiness_waits_until_every_check_has_answered_once():
    answers = {"web": iter([False, True]), "beat": iter([False, False, True])}
    checks = [startup.ReadinessCheck(name, lambda name=name: next(answers[name])) for name in answers]

    assert startup.readiness_wait(checks, stopping=threading.Event(), still_waiting=lambda _: None) is True
    assert [next(answers[name], "spent") for name in answers] == ["spent", "spent"]


def test_readiness_wait_gives_up_when_stopping():
    stopping = threading.Event()
    stopping.set()
    never = [startup.ReadinessCheck("worker", lambda: False)]

    assert startup.readiness_wait(never, stopping=stopping, still_waiting=lambda _: None) is False


def test_banner_says_how_to_reset_a_password_changed_since_the_first_run(tmp_path):
    text = startup.banner(
        heading="Personalization platform: running",
        addresses=startup.Addresses("0.0.0.0", 8000, 8001),
        admin_password=None,
        demo_api_key="pk_demo",
        example_user="customer-1",
        credentials_path=tmp_path / "console-credentials.json",
        footer=[],
    )

    assert "user 'admin', password changed since the first run (reset: .venv/bin/python manage.py" in text
    assert "changepassword admin)" in text
    assert "Authorization: Bearer pk_demo" in text and "user_id=customer-1&placement=home" in text
    assert startup.Addresses("0.0.0.0", 8000, 8001).probe_host == "127.0.0.1"


def test_every_task_beat_sends_each_second_or_minute_is_routine(settings):
    """Their Celery lines ("Sending due task", "received", "succeeded") are at DEBUG; the tasks log what they did."""
    routine = set(settings.LOGGING["filters"]["routine_tasks"]["tasks"])
    frequent = {task for _, task, _ in SECONDS_SCHEDULES} | {task for _, task, every in DEFAULT_SCHEDULES if every == 1}

    assert frequent <= routine
    sent = logging.LogRecord(
        "celery.beat", logging.INFO, __file__, 1, "Scheduler: Sending due task %s (%s)",
        ("Teach the contextual bandit from rewards", "scoring.bandit_learn"), None,
    )  # fmt: skip
    RoutineTaskFilter(tasks=routine).filter(sent)
    assert sent.levelno == logging.DEBUG


@pytest.mark.django_db
def test_a_bandit_run_that_learned_nothing_logs_at_debug(caplog):
    from scoring_app.bandit import bandit_learn

    caplog.set_level(logging.DEBUG, logger="scoring_app.bandit")
    bandit_learn()  # publishes a first, untrained model: worth a line
    bandit_learn()  # nothing to learn from, nothing published

    levels = [record.levelno for record in caplog.records if record.getMessage() == "score.bandit_learned"]
    assert levels == [logging.INFO, logging.DEBUG]


def test_als_gives_no_blas_threads_warning_during_a_training(settings, monkeypatch):
    """implicit's "OpenBLAS is configured to use N threads" warning, once printed by the first start's training,
    also in a process that loaded faiss (whose OpenMP-threaded OpenBLAS no BLAS limit reaches)."""
    import faiss  # noqa: F401
    import implicit.utils

    from graph_app.training import AlsSettings, Interactions, als_fit

    settings.TRAINING_THREADS = 2
    monkeypatch.setattr(implicit.utils, "_checked_blas_config", False)  # it warns once per process
    interactions = Interactions(
        user_ids=["u1", "u2"], item_ids=["a", "b"], users=np.array([0, 1, 1]), items=np.array([0, 0, 1]),
        weights=np.ones(3, dtype=np.float32), latest=np.zeros(3), purchased=np.ones(3, dtype=bool),
    )  # fmt: skip

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        als_fit(interactions, AlsSettings(regularization=1.0, iterations=1, alpha=1.0, random_state=1))


@pytest.mark.django_db
def test_bootstrap_numbers_its_steps_and_says_when_a_demo_load_was_cut_short(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    ItemFactory(external_id="a")
    EventFactory(item_id="a", type="purchase")
    (tmp_path / "demo-loading").touch()  # left by a first start stopped with Ctrl-C while it loaded the demo
    out = io.StringIO()

    platform_bootstrap(step=startup.StepReporter(len(BOOTSTRAP_STEPS), stream=out).step)

    lines = out.getvalue().splitlines()
    cut_short = f"skipped, but a demo load was cut short: delete {tmp_path} to load all of it"
    assert lines[0] == f"[1/4] Loading the demo catalog ... {cut_short}"
    assert lines[1].startswith("[2/4] Training the item embeddings ... 100% ")
    assert lines[3].startswith("[4/4] Installing placements, schedules and the console login ... 100% ")
    assert len(lines) == 4


@pytest.mark.django_db
def test_platform_info_prints_the_kept_login_and_says_when_the_platform_is_down(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    get_user_model().objects.create_superuser(username="admin", email="", password="first-run-pw")
    credentials_file().write_text(json.dumps({"admin_password": "first-run-pw", "demo_api_key": "pk_demo"}))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        startup.addresses_store(tmp_path, startup.Addresses("127.0.0.1", probe.getsockname()[1], 8001))
    out = io.StringIO()

    call_command("platform_info", stdout=out)

    assert "Personalization platform: not running (start it with `make run`)" in out.getvalue()
    assert "user 'admin', password first-run-pw" in out.getvalue()
    assert "API key    pk_demo" in out.getvalue()


@pytest.mark.django_db
def test_platform_info_before_any_start_says_what_to_do(settings, tmp_path):
    settings.DATA_DIR = tmp_path

    with pytest.raises(CommandError, match="No console login yet: `make run` makes one on its first start"):
        call_command("platform_info")
