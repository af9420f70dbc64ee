"""The production units in deploy/systemd: valid for systemd, restarted always, one per process of `make run`."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.embedded_test_env import PROJECT_ROOT

UNITS_DIR = PROJECT_ROOT / "deploy" / "systemd"
INSTALLED_BIN = "/opt/personalization/.venv/bin"
PROGRAMS = ("web", "ws", "worker", "events", "beat")  # run_platform's processes


def _service_files() -> list[Path]:
    return sorted(UNITS_DIR.glob("*.service"))


def _read(unit: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)  # systemd repeats keys (Environment=, Wants=)
    parser.optionxform = str  # keys keep their case
    parser.read(unit)
    return parser


def test_there_is_one_service_per_process_of_make_run():
    assert [unit.name for unit in _service_files()] == sorted(f"personalization-{name}.service" for name in PROGRAMS)


@pytest.mark.parametrize("unit", _service_files(), ids=lambda unit: unit.name)
def test_every_service_is_restarted_whatever_its_exit_and_reads_the_environment_file(unit):
    parsed = _read(unit)

    assert parsed["Service"]["Restart"] == "always"
    assert parsed["Service"]["RestartSec"] == "2s"
    assert parsed["Unit"]["StartLimitIntervalSec"] == "0"
    assert parsed["Service"]["EnvironmentFile"] == "/etc/personalization/env"
    assert parsed["Service"]["ExecStart"].startswith(f"{INSTALLED_BIN}/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_every_unit_without_a_warning(tmp_path):
    # verify checks that ExecStart's program exists: point the copies at this checkout's virtualenv.
    for unit in [*_service_files(), UNITS_DIR / "personalization.target"]:
        text = unit.read_text().replace(INSTALLED_BIN, str(Path(sys.executable).parent))
        (tmp_path / unit.name).write_text(text)

    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(path) for path in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert (result.returncode, result.stdout + result.stderr) == (0, "")
