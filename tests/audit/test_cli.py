"""``reservations history``, ``show`` and ``audit-api`` through click, against a real ledger."""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.audit.conftest import SEEDED_ROWS, Seeded
from tests.support.commands import served_command
from workers.audit.rows import EVENT_FIELDS
from workers.cli import main
from workers.cli.audit_api import is_loopback
from workers.cli.history import chosen_format
from workers.core.sids import new_sid
from workers.ledger.events import Transition
from workers.ledger.models import Source
from workers.ledger.writer import PostgresLedgerWriter


def run(db_url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"DATABASE_URL": db_url, **(env or {})})


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_history_as_json_lines_by_default_outside_a_terminal(db_url: str, seeded: Seeded) -> None:
    rows = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid))
    assert len(rows) == SEEDED_ROWS
    assert list(rows[0]) == list(EVENT_FIELDS)
    assert rows[0]["kind"] == "received"
    failed = json_lines(
        run(db_url, "history", "--workspace", seeded.workspace_sid, "--outcome", "failed", "--format", "json")
    )
    assert [(r["action_id"], r["twilio_error_code"]) for r in failed] == [(str(seeded.failed), 20404)]


@pytest.mark.parametrize(
    ("option", "value", "count"),
    [
        ("--reservation", "reservation_sids", 6),
        ("--task", "task_sids", 9),
        ("--worker", "worker_sids", 9),
        ("--kind", "transition", 3),
        ("--twilio-error-code", "20404", 2),
        ("--correlation-id", "correlation_id", 9),
    ],
)
def test_history_filters(db_url: str, seeded: Seeded, option: str, value: str, count: int) -> None:
    given = getattr(seeded, value, value)
    given = given[0] if isinstance(given, list) else given
    rows = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid, option, given))
    assert len(rows) == count


def test_history_pages_with_after_and_limit(db_url: str, seeded: Seeded) -> None:
    first = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid, "--limit", "5"))
    rest = json_lines(
        run(db_url, "history", "--workspace", seeded.workspace_sid, "--after", first[-1]["cursor"])
    )
    assert len(first) == 5
    assert len(rest) == SEEDED_ROWS - 5
    assert rest[0]["position"] > first[-1]["position"]


def test_history_as_csv_and_as_a_table(db_url: str, seeded: Seeded) -> None:
    result = run(db_url, "history", "--action-id", str(seeded.failed), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["kind"] for r in rows] == ["received", "attempt", "outcome"]
    assert rows[-1]["twilio_error_code"] == "20404"
    table = run(db_url, "history", "--action-id", str(seeded.failed), "--format", "table")
    assert table.exit_code == 0, table.output
    assert "outcome" in table.stdout
    assert "failed" in table.stdout
    assert "3 row(s)" in table.stderr


def test_time_filters(db_url: str, seeded: Seeded) -> None:
    every = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid))
    middle = every[6]["recorded_at"]
    later = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid, "--since", middle))
    assert later[0]["position"] == every[6]["position"]
    future = json_lines(run(db_url, "history", "--workspace", seeded.workspace_sid, "--since", "2999-01-01"))
    assert future == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reservation", "WR' OR 1=1"], "is not a WR SID"),
        (["--since", "last tuesday"], "RFC 3339"),
        (["--action-id", "nope"], "UUID"),
        (["--after", "x"], "cursor"),
        (["--kind", "won"], "won"),
    ],
)
def test_history_refuses_bad_filters(db_url: str, args: list[str], message: str) -> None:
    result = run(db_url, "history", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_show_tells_an_actions_story(db_url: str, seeded: Seeded) -> None:
    table = run(db_url, "show", str(seeded.applied[0]), "--format", "table")
    assert table.exit_code == 0, table.output
    assert "pending → accepted" in table.stdout
    assert "applied" in table.stdout
    story = json.loads(run(db_url, "show", str(seeded.failed), "--format", "json").stdout)
    assert story["action"]["outcome"] == "failed"
    assert [e["kind"] for e in story["events"]] == ["received", "attempt", "outcome"]
    assert story["redriven_as"] == []
    missing = run(db_url, "show", str(uuid.uuid4()))
    assert missing.exit_code == 1
    assert "never received" in missing.output


def test_audit_api_refuses_to_start_without_a_token(db_url: str) -> None:
    result = run(db_url, "audit-api", env={"AUDIT_API_TOKEN": ""})
    assert result.exit_code == 2
    assert "AUDIT_API_TOKEN is not set" in result.output
    exposed = run(db_url, "audit-api", "--insecure-local", "--host", "0.0.0.0", env={"AUDIT_API_TOKEN": ""})  # noqa: S104
    assert exposed.exit_code == 2
    assert "loopback" in exposed.output


def test_audit_api_help_shows_the_environment() -> None:
    result = CliRunner().invoke(main, ["audit-api", "--help"])
    assert result.exit_code == 0
    for name in (
        "AUDIT_API_HOST",
        "AUDIT_API_PORT",
        "AUDIT_API_INSECURE_LOCAL",
        "DATABASE_URL",
        "AUDIT_API_TOKEN",
    ):
        assert name in result.output


def test_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")  # noqa: S104
    assert not is_loopback("example.com")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_the_default_format_is_a_table_only_in_a_terminal() -> None:
    assert chosen_format(None, _Stream(tty=True)) == "table"
    assert chosen_format(None, _Stream(tty=False)) == "json"
    assert chosen_format("csv", _Stream(tty=True)) == "csv"


@pytest.mark.acceptance
def test_audit_api_serves_over_http(db_url: str, seeded: Seeded) -> None:
    """The real command: uvicorn on a free port, the token from the environment; JSON log lines
    (stderr is no terminal), uvicorn's and the access lines, once each, and request metrics on /metrics."""
    env = {**os.environ, "DATABASE_URL": db_url, "AUDIT_API_TOKEN": "served-token"}
    with served_command("audit-api", env, "/readyz") as served:
        base = served.base
        assert httpx.get(f"{base}/v1/events", timeout=5).status_code == 401
        page = httpx.get(
            f"{base}/v1/workspaces/{seeded.workspace_sid}/history",
            headers={"Authorization": "Bearer served-token"},
            timeout=5,
        )
        assert page.status_code == 200
        assert len(page.json()["items"]) == SEEDED_ROWS
        assert "/v1/events" in httpx.get(f"{base}/openapi.json", timeout=5).json()["paths"]
        assert httpx.get(f"{base}/WR{'0' * 32}/../etc/passwd", timeout=5).status_code == 404
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.headers["content-type"].startswith("text/plain")
        history = "/v1/workspaces/{workspace_sid}/history"
        total, count = "reservations_http_requests_total", "reservations_http_request_duration_seconds_count"
        for series in (
            f'{total}{{api="audit",handler="{history}",method="GET",status="200"}} 1.0',
            f'{total}{{api="audit",handler="/v1/events",method="GET",status="401"}} 1.0',
            f'{total}{{api="audit",handler="unmatched",method="GET",status="404"}} 1.0',
            f'{count}{{api="audit",handler="{history}",method="GET"}} 1.0',
        ):
            assert series in metrics.text
        assert seeded.workspace_sid not in metrics.text  # route templates, never raw paths
        assert "passwd" not in metrics.text
    log = served.log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert {"uvicorn.error", "workers.audit.access"} <= {line["logger"] for line in lines}, log
    access = [line for line in lines if line["logger"] == "workers.audit.access"]
    assert any("/v1/events 401" in line["message"] and line["level"] == "INFO" for line in access)
    assert len([line for line in access if "/metrics" in line["message"]]) == 1  # one line per request
    assert "served-token" not in log


def test_history_finds_rows_by_a_known_pii_value(db_url: str, writer: Any) -> None:
    from tests.audit.conftest import PII_KEY
    from workers.core.action import Action, ActionKind
    from workers.core.sids import new_sid

    action = Action(
        uuid.uuid4(),
        ActionKind.CALL,
        new_sid("WS"),
        new_sid("WR"),
        task_sid=new_sid("WT"),
        params={"call_from": "+15557654321", "call_url": "https://x.test/twiml"},
    )
    writer.receive(action)
    env = {"LEDGER_PII_KEY": PII_KEY}
    deadline = time.monotonic() + 10
    while True:
        rows = json_lines(run(db_url, "history", "--pii-value", "+15557654321", env=env))
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [row["action_id"] for row in rows] == [str(action.action_id)]
    assert "+15557654321" not in json.dumps(rows)
    assert json_lines(run(db_url, "history", "--pii-value", "+15550000000", env=env)) == []


def test_history_show_and_timeline_say_where_each_transition_was_learnt(
    db_url: str, writer: PostgresLedgerWriter
) -> None:
    sid = new_sid("WR")
    for status in ("pending", "accepted"):
        writer.append(
            Transition(
                sid,
                from_status=None,
                to_status=status,
                etag_before=None,
                etag_after=None,
                source=Source.EVENT,
            )
        )
    writer.append(
        Transition(sid, from_status="accepted", to_status="wrapping", etag_before=None, etag_after="7")
    )
    rows = json_lines(run(db_url, "history", "--reservation", sid, "--format", "json"))
    assert [(r["to_status"], r["source"]) for r in rows] == [
        ("pending", "event"),
        ("accepted", "event"),
        ("wrapping", "fetch"),
    ]
    table = run(db_url, "history", "--reservation", sid, "--format", "table")
    assert table.exit_code == 0, table.output
    assert "source" in table.stdout
    assert "event" in table.stdout
    assert "fetch" in table.stdout
    steps = json_lines(run(db_url, "replay", "timeline", "--reservation", sid, "--format", "json"))
    assert [(s["to_status"], s["source"]) for s in steps] == [
        ("pending", "event"),
        ("accepted", "event"),
        ("wrapping", "fetch"),
    ]
