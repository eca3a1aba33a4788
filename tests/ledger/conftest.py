"""Fixtures for the ledger's tests: a writer and a reader over the real PostgreSQL databases of
tests/conftest.py (one per module, or one per test for tests that tamper with it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from workers.core.action import Action, ActionKind
from workers.core.sids import new_sid
from workers.ledger.connector import Connector, connect
from workers.ledger.events import Attempt, Transition
from workers.ledger.models import Checkpoint, Outcome, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import seal_checkpoint
from workers.ledger.writer import PostgresLedgerWriter

PII_KEY = "test-pii-key"


def open_writer(url: str, max_size: int = 4, role: Role = Role.WRITER) -> PostgresLedgerWriter:
    connector = Connector(url, role, min_size=1, max_size=max_size)
    connector.open()
    return PostgresLedgerWriter(connector, PII_KEY)


def open_reader(url: str, max_size: int = 4) -> LedgerReader:
    connector = Connector(url, Role.READER, min_size=1, max_size=max_size)
    connector.open()
    return LedgerReader(connector, PII_KEY)


@pytest.fixture(scope="module")
def writer(db_url: str) -> Iterator[PostgresLedgerWriter]:
    with open_writer(db_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def reader(db_url: str) -> Iterator[LedgerReader]:
    with open_reader(db_url) as opened:
        yield opened


@pytest.fixture
def fresh_writer(fresh_db_url: str) -> Iterator[PostgresLedgerWriter]:
    with open_writer(fresh_db_url) as opened:
        yield opened


@pytest.fixture
def fresh_reader(fresh_db_url: str) -> Iterator[LedgerReader]:
    with open_reader(fresh_db_url) as opened:
        yield opened


def make_action(**overrides: Any) -> Action:
    fields: dict[str, Any] = {
        "action_id": uuid.uuid4(),
        "action": ActionKind.ACCEPT,
        "workspace_sid": new_sid("WS"),
        "reservation_sid": new_sid("WR"),
        "task_sid": new_sid("WT"),
        "worker_sid": new_sid("WK"),
        "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
        "producer": "tests",
    }
    fields.update(overrides)
    return Action(**fields)


def superuser(url: str) -> psycopg.Connection[Any]:
    """A superuser connection that bypasses the ledger's role (for tampering and inspection)."""
    return psycopg.connect(url, autocommit=True)


def waits_for(url: str, pid: int, wait_event: str, seconds: float = 30) -> bool:
    """Whether the backend ``pid`` comes to wait on ``wait_event`` (pg_stat_activity) within
    ``seconds``: how a test knows another connection is blocked where it means it to be."""
    with superuser(url) as admin:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = admin.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
            if found and found[0] == wait_event:
                return True
            time.sleep(0.02)
    return False


def seal(url: str) -> Checkpoint:
    """Seal a checkpoint as the writer role does (``reservations ledger checkpoint``)."""
    with connect(url, Role.WRITER) as conn:
        return seal_checkpoint(conn)


def accept_applied(
    writer: PostgresLedgerWriter,
    action: Action | None = None,
    *,
    with_attempt: bool = False,
    task_sid: str | None = None,
) -> Action:
    """Receive an accept and record it applied (pending -> accepted, ETag 1 -> 2), after an attempt
    row if asked, with the task TaskRouter reported if given; the action."""
    action = action or make_action()
    writer.receive(action)
    if with_attempt:
        writer.append(Attempt(action.action_id, attempt=1, etag_before="1", http_status=200))
    writer.append(
        Transition(
            action.reservation_sid,
            action_id=action.action_id,
            from_status="pending",
            to_status="accepted",
            etag_before="1",
            etag_after="2",
            task_sid=task_sid,
            outcome=Outcome.APPLIED,
        )
    )
    return action


def append_attempt_as_before_0012(url: str, action_id: uuid.UUID) -> None:
    """Append an attempt of a received action as the functions before migration 0012 did (through
    the chain trigger): the action's facts repeated from its registry entry."""
    with superuser(url) as conn:
        conn.execute(
            "INSERT INTO ledger.events (kind, action_id, action, workspace_sid, reservation_sid, task_sid,"
            " worker_sid, attempt, http_status, correlation_id, producer)"
            " SELECT 'attempt', action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,"
            " 1, 200, correlation_id, producer FROM ledger.actions WHERE action_id = %s",
            [action_id],
        )
