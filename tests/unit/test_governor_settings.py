"""The governor's settings: a conservative default, 0 turns it off, nonsense is a one-line error."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.cli import main
from workers.config import Settings
from workers.errors import ConfigurationError


def test_the_governor_is_on_by_default_with_a_share_kept_for_other_applications() -> None:
    settings = Settings.from_env({})
    assert settings.taskrouter_max_concurrency == 50
    assert settings.taskrouter_reserved_concurrency == 10
    assert settings.taskrouter_lease_seconds == 10.0
    assert settings.taskrouter_slot_wait == 10.0


def test_zero_turns_the_governor_off() -> None:
    settings = Settings.from_env({"TASKROUTER_MAX_CONCURRENCY": "0"})
    assert settings.taskrouter_max_concurrency == 0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TASKROUTER_MAX_CONCURRENCY": "-1"}, "TASKROUTER_MAX_CONCURRENCY must be at least 0"),
        ({"TASKROUTER_MAX_CONCURRENCY": "many"}, "TASKROUTER_MAX_CONCURRENCY must be a whole number"),
        ({"TASKROUTER_MAX_CONCURRENCY": "10"}, "TASKROUTER_RESERVED_CONCURRENCY must be less"),
        ({"TASKROUTER_LEASE_SECONDS": "0"}, "TASKROUTER_LEASE_SECONDS must be more than 0"),
        ({"TASKROUTER_SLOT_WAIT": "-2"}, "TASKROUTER_SLOT_WAIT must not be negative"),
    ],
)
def test_bad_governor_settings_are_one_line_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        Settings.from_env(environ)
    assert "\n" not in str(raised.value)


def test_the_emulator_command_offers_an_account_concurrency_limit() -> None:
    result = CliRunner().invoke(main, ["emulator", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for text in ("--concurrency-limit", "EMULATOR_CONCURRENCY_LIMIT", "--concurrency-retry-after", "20429"):
        assert text in result.output
    refused = CliRunner().invoke(main, ["emulator", "--concurrency-limit", "0"])
    assert refused.exit_code == 2
