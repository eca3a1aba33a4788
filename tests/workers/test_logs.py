"""LOG_FORMAT=json through a real worker: one JSON object per line, and no PII or secrets."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from typing import Any

import pytest

from tests.support.e2e import PII_KEY, action_for, wait_for_outcome
from workers.config import Settings
from workers.core.action import Action, ActionKind
from workers.errors import ConfigurationError
from workers.ledger.reader import LedgerReader
from workers.logs import FIELDS, JsonFormatter, logger_setup, wants_json
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN
from workers.testing.processes import WorkerProcess

CALL_FROM = "+15557770001"
CALL_URL = "https://example.test/twiml/secret-path"


def test_the_formatter_writes_one_json_object_with_the_ledger_fields() -> None:
    record = logging.LogRecord("workers.apply", logging.INFO, __file__, 1, "action %s: %s", ("a1", "x"), None)
    record.__dict__.update(action_id="a1", outcome="applied", run=2, delay=None, unrelated="no")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert set(parsed) == {"time", "level", "logger", "message", "action_id", "outcome", "run"}
    assert parsed["message"] == "action a1: x"
    assert parsed["time"].endswith("+00:00")
    assert set(FIELDS) >= {"action_id", "reservation_sid", "correlation_id", "run", "outcome", "delay"}


def test_the_formatter_keeps_a_traceback_inside_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("w", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    parsed = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in parsed["exception"]


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("value", "tty", "expected"),
    [
        ("json", True, True),
        ("text", False, False),
        ("", False, True),
        ("auto", True, False),
        ("", True, False),
    ],
)
def test_log_format_chooses_json_off_a_terminal(value: str, tty: bool, expected: bool) -> None:
    env = {"LOG_FORMAT": value} if value else {}
    assert wants_json(Settings.from_env(env).log_format, _Stream(tty)) is expected


def test_an_unknown_log_format_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})


@pytest.mark.acceptance
def test_json_logs_of_a_real_worker_parse_and_hold_no_pii_or_secrets(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservation = admin.create_reservation()
    params = {"call_from": CALL_FROM, "call_url": CALL_URL, "call_accept": True}
    call = action_for(reservation, ActionKind.CALL, params=params)
    # A reservation TaskRouter does not know: 404, failed, and its message kept for redrive.
    unknown = Action(
        uuid.uuid4(), ActionKind.CALL, reservation.workspace_sid, "WR" + "f" * 32,
        task_sid=reservation.task_sid, params=params,
    )  # fmt: skip
    with WorkerProcess({**worker_env, "LOG_FORMAT": "json"}, concurrency=2) as worker:
        celery_app.enqueue(call)
        celery_app.enqueue(unknown)
        assert wait_for_outcome(ledger, call.action_id).outcome == "applied"
        assert wait_for_outcome(ledger, unknown.action_id).outcome == "failed"
        time.sleep(0.3)  # the task logs its outcome just after the ledger has it
        log = worker.log()

    for secret in (CALL_FROM, EMULATOR_AUTH_TOKEN, PII_KEY):
        assert secret not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert lines, log
    applies = [line for line in lines if line["logger"] == "workers.apply"]
    outcomes = {line["action_id"]: line["outcome"] for line in applies}
    assert outcomes == {str(call.action_id): "applied", str(unknown.action_id): "failed"}
    assert all(line["run"] == 1 for line in applies)
    assert {line["reservation_sid"] for line in applies} == {reservation.sid, unknown.reservation_sid}
    for line in log.splitlines():
        if "workers.apply" in line:
            json.loads(line)


@pytest.mark.parametrize(
    ("log_level", "celery_level", "ours"),
    [
        ("INFO", logging.WARNING, logging.INFO),  # Celery's default: our lines still show
        ("INFO", logging.DEBUG, logging.DEBUG),  # --loglevel debug lowers ours too
        ("WARNING", logging.WARNING, logging.WARNING),
        ("ERROR", None, logging.ERROR),
    ],
)
def test_our_loggers_log_at_log_level_whatever_celerys_default(
    log_level: str, celery_level: int | None, ours: int
) -> None:
    logger = logging.getLogger("workers")
    before = logger.level
    try:
        logger_setup("text", log_level)(logger=logging.getLogger("celery-test"), loglevel=celery_level)
        assert logger.level == ours
    finally:
        logger.setLevel(before)
