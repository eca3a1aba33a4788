"""`reservations events-api` and `reservations reconcile` refuse to run half-configured, in one line."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest
from click.testing import CliRunner

from tests.support.commands import served_command
from workers.cli import main
from workers.core.sids import new_sid
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.testing.emulator.events import sign_form
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN


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


@pytest.mark.acceptance
def test_the_events_api_logs_json_lines_like_every_process(db_url: str) -> None:
    """The real command, stderr no terminal: uvicorn's lines and ours are JSON, and a forged
    callback is refused (403) without its token or body reaching the log."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "EVENTS_PUBLIC_URL": "https://events.example.com",
        "EVENTS_AUTH_TOKEN": "events-token-not-for-logs",
        "LOG_FORMAT": "auto",
    }
    with served_command("events-api", env, "/healthz") as served:
        base = served.base
        forged = httpx.post(
            f"{base}/taskrouter/events",
            data={"EventType": "reservation.accepted", "ResourceSid": "WR" + "0" * 32},
            headers={"X-Twilio-Signature": "forged"},
            timeout=5,
        )
        assert forged.status_code == 403
    log = served.log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert "uvicorn.error" in {line["logger"] for line in lines}, log
    assert "events-token-not-for-logs" not in log


@pytest.mark.acceptance
def test_the_events_api_serves_from_several_processes(db_url: str) -> None:
    """``--workers 3`` (EVENTS_API_WORKERS): signed callbacks are recorded whichever process takes
    them, a forged one is refused, and /metrics adds up every process's counts."""
    public = "https://events.example.com"
    env = {
        **{name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"},
        "DATABASE_URL": db_url,
        "EVENTS_PUBLIC_URL": public,
        "EVENTS_AUTH_TOKEN": EMULATOR_AUTH_TOKEN,
        "EVENTS_API_WORKERS": "3",
        "LOG_FORMAT": "text",
    }
    sids = [new_sid("WR") for _ in range(12)]
    with served_command("events-api", env, "/readyz", timeout=40) as served:
        for sid in sids:  # a connection each: the kernel hands them to the processes
            form = {
                "EventType": "reservation.accepted",
                "ResourceType": "Reservation",
                "ResourceSid": sid,
                "ReservationSid": sid,
                "WorkspaceSid": "WS" + "0" * 32,
                "Sid": "EV" + uuid.uuid4().hex,
            }
            signature = sign_form(public + "/taskrouter/events", form, EMULATOR_AUTH_TOKEN)
            answer = httpx.post(
                f"{served.base}/taskrouter/events", data=form, headers={"X-Twilio-Signature": signature}
            )
            assert answer.status_code == 204, answer.text
        forged = httpx.post(
            f"{served.base}/taskrouter/events", data=form, headers={"X-Twilio-Signature": "forged"}
        )
        assert forged.status_code == 403
        exposed = httpx.get(f"{served.base}/metrics").text
    assert 'reservations_events_total{channel="callback",result="recorded"} 12.0' in exposed, exposed
    assert 'reservations_events_total{channel="callback",result="refused"} 1.0' in exposed
    with connect(db_url, Role.READER) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM ledger.events WHERE source = 'event' AND chain_key = ANY(%s)", [sids]
        ).fetchone()
    assert rows == (12,)
