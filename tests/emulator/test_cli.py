"""The commands: ``reservations emulator`` as a real subprocess, and ``reservations demo``."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from workers.cli import main
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import EmulatorProcess


def test_emulator_help_shows_every_environment_fallback() -> None:
    result = CliRunner().invoke(main, ["emulator", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for variable in (
        "EMULATOR_HOST",
        "EMULATOR_PORT",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_API_KEY",
        "TWILIO_API_SECRET",
        "EMULATOR_STRICT_HEADERS",
        "EMULATOR_ACCESS_LOG",
    ):
        assert variable in result.output


def test_emulator_refuses_a_bad_account_sid() -> None:
    result = CliRunner().invoke(main, ["emulator", "--account-sid", "nope"])
    assert result.exit_code == 2
    assert "account SID" in result.output


@pytest.mark.acceptance
def test_emulator_subprocess_serves_and_stops() -> None:
    with (
        EmulatorProcess(extra_args=["--strict-headers"]) as emulator,
        EmulatorAdmin(emulator.base_url) as admin,
    ):
        assert admin.health()["strict_headers"] is True
        pid = emulator.pid
    assert pid is not None


def test_module_entry_point_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers.testing.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert "--strict-headers" in result.stdout
