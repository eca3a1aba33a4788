"""`reservations events-api` and `reservations reconcile` refuse to run half-configured, in one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.cli import main


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EVENTS_AUTH_TOKEN": "t"}, "set EVENTS_PUBLIC_URL"),
        ({"EVENTS_PUBLIC_URL": "https://events.example.com"}, "EVENTS_AUTH_TOKEN (or TWILIO_AUTH_TOKEN)"),
        ({"EVENTS_PUBLIC_URL": "events.example.com", "EVENTS_AUTH_TOKEN": "t"}, "public http(s) URL"),
        (
            {
                "EVENTS_PUBLIC_URL": "https://e.example.com",
                "EVENTS_AUTH_TOKEN": "t",
                "EVENTS_STREAMS_AUTH": "basic",
            },
            "EVENTS_BASIC_AUTH=user:password",
        ),
        (
            {
                "EVENTS_PUBLIC_URL": "https://e.example.com",
                "EVENTS_AUTH_TOKEN": "t",
                "EVENTS_STREAMS_AUTH": "magic",
            },
            "EVENTS_STREAMS_AUTH must be",
        ),
    ],
)
def test_the_events_api_refuses_to_start_without_what_it_checks_with(
    env: dict[str, str], message: str
) -> None:
    clean = {
        "EVENTS_PUBLIC_URL": None,
        "EVENTS_AUTH_TOKEN": None,
        "TWILIO_AUTH_TOKEN": None,
        "TWILIO_ACCOUNT_SID": None,
    }
    result = CliRunner().invoke(main, ["events-api"], env={**clean, **env})
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_reconcile_needs_taskrouter_credentials() -> None:
    clean = {
        "TWILIO_ACCOUNT_SID": None,
        "TWILIO_AUTH_TOKEN": None,
        "TWILIO_API_KEY": None,
        "TWILIO_API_SECRET": None,
    }
    result = CliRunner().invoke(main, ["reconcile", "--workspace", "WS" + "0" * 32], env=clean)
    assert result.exit_code == 2
    assert "TWILIO_ACCOUNT_SID" in result.output
