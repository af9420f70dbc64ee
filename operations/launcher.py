"""What the two run commands share (`run_platform`, `make run`; `run_cluster`, `make cluster`): the set-up steps
before the processes (migrations, first-run bootstrap), the environment every child gets, and the supervision that
prints the banner once every process answers and stops everything on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TextIO

import psutil
from django.core.management import call_command

from operations import startup
from operations.bootstrap import BootstrapReport, credentials_file, platform_bootstrap
from personalization.supervision import Supervisor

# Celery warns at every start that a worker runs as root. `make run` is a developer's platform, often in a container
# where root is the only user, and our workers accept JSON only (Celery refuses root outright with pickle).
# Production runs them as their own user (deploy/systemd), and there the warning stays on.
ROOT_WARNING_SILENCED = "ignore:You're running the worker with superuser privileges"


def banner_for(
    report: BootstrapReport, addresses: startup.Addresses, *, footer: list[str], again_command: str = "platform_info"
) -> Callable[..., str]:
    """The banner of a run command, waiting for its heading (printed once every process answers)."""
    return partial(
        startup.banner,
        addresses=addresses,
        admin_password=report.admin_password,
        demo_api_key=report.demo_api_key,
        example_user=startup.example_shopper(),
        credentials_path=credentials_file(),
        footer=footer,
        again_command=again_command,
    )


def foreground_run(run: Callable[[], None], *, stop_servers: Callable[[], None] | None, stdout: TextIO) -> None:
    """Run the command in the terminal's foreground (Ctrl-C is ours alone) and stop the servers it started at the
    end, whatever ended it."""
    with startup.terminal_foreground():
        try:
            run()
        except KeyboardInterrupt:
            with contextlib.suppress(OSError):  # the terminal may be gone (SIGHUP)
                stdout.write("\nStopped before the platform was up.\n")
        finally:
            if stop_servers is not None:
                stop_servers()


def platform_prepare(
    *, data_dir: Path, steps_total: int, servers_title: str, with_demo_data: bool, stdout: TextIO
) -> tuple[startup.StepReporter, BootstrapReport]:
    """Say what the start does, report the servers' start (this process's age: the settings, or manage.py for the
    cluster, started them while it loaded), migrate and bootstrap; the steps reporter goes on with the processes."""
    setup_log = data_dir / startup.SETUP_LOG_FILE
    first_start = "" if credentials_file().exists() else " (a first start trains the first models"
    if first_start:
        first_start += ", on the demo data: a minute or two)" if with_demo_data else ")"
    stdout.write(
        f"Starting the personalization platform{first_start}; set-up details in {startup.display_path(setup_log)}\n"
    )
    steps = startup.StepReporter(steps_total, stream=sys.stdout)
    steps.done(servers_title, time.time() - psutil.Process().create_time())
    with startup.setup_log_to_file(setup_log):
        with steps.step("Migrating the database"):
            call_command("migrate", interactive=False, verbosity=0)
        report = platform_bootstrap(with_demo_data=with_demo_data, step=steps.step)
    return steps, report


def child_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment for a child, unbuffered, with readable log lines, and the overrides."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # Readable key=value lines in the terminal, whatever DJANGO_DEBUG says (production prints JSON).
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"),
        **overrides,
    }


def metrics_dir_fresh(data_dir: Path) -> Path:
    """An empty folder for prometheus_client's multiprocess files: counters and histograms from every process are
    merged at scrape time; files of a previous run would be counted again."""
    metrics_dir = data_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    return metrics_dir


def celery_env(env: Mapping[str, str]) -> dict[str, str]:
    warning_filters = [env["PYTHONWARNINGS"]] if env.get("PYTHONWARNINGS") else []
    return {**env, "PYTHONWARNINGS": ",".join([*warning_filters, ROOT_WARNING_SILENCED])}


def supervise_until_signalled(
    supervisor: Supervisor,
    *,
    checks: list[startup.ReadinessCheck],
    heading: str,
    banner: Callable[..., str],
    stdout: TextIO,
) -> None:
    """Run the supervisor until Ctrl-C, printing the banner once every check has answered."""
    stdout.write(f"{heading} (their lines follow; the banner comes once each answers)\n")
    stdout.flush()
    stopping = threading.Event()
    announcer = threading.Thread(
        target=_announce_when_ready, args=(supervisor, checks, stopping, heading, banner), daemon=True
    )
    announcer.start()
    try:
        supervisor.run_until_signalled()
    finally:
        stopping.set()


def _announce_when_ready(
    supervisor: Supervisor,
    checks: list[startup.ReadinessCheck],
    stopping: threading.Event,
    heading: str,
    banner: Callable[..., str],
) -> None:
    """Print the banner once every process answers: its URLs work when it appears."""
    began = time.monotonic()
    ready = startup.readiness_wait(
        checks,
        stopping=stopping,
        still_waiting=lambda names: supervisor.announce(f"{heading} still waiting for: {', '.join(names)}"),
    )
    if ready and not stopping.is_set():
        started = time.time() - psutil.Process().create_time()
        supervisor.announce(
            f"{heading} 100% {time.monotonic() - began:.1f} s\n"
            + banner(heading=f"Personalization platform: ready, started in {started:.0f} s")
        )
