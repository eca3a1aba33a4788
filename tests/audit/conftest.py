"""Fixtures for the audit tests: a ledger with a known, mixed history, and the API over it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.audit.support import TestClient, eventually
from workers.audit.api import AuditApiConfig, create_app
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.sids import new_sid
from workers.ledger.connector import Connector
from workers.ledger.events import Attempt, Settle, Transition
from workers.ledger.models import Role
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter

PII_KEY = "audit-test-pii-key"
TOKEN = "audit-test-token-0123456789"


@dataclass
class Seeded:
    """What :func:`seed` wrote: three reservations of one workspace, on two tasks and workers."""

    workspace_sid: str = field(default_factory=lambda: new_sid("WS"))
    task_sids: list[str] = field(default_factory=lambda: [new_sid("WT"), new_sid("WT")])
    worker_sids: list[str] = field(default_factory=lambda: [new_sid("WK"), new_sid("WK")])
    reservation_sids: list[str] = field(default_factory=lambda: [new_sid("WR") for _ in range(3)])
    applied: list[uuid.UUID] = field(default_factory=list)
    failed: uuid.UUID | None = None
    correlation_id: str = field(default_factory=lambda: f"corr-{uuid.uuid4().hex[:8]}")


def action(seeded: Seeded, index: int, kind: ActionKind = ActionKind.ACCEPT, **fields: object) -> Action:
    return Action(
        uuid.uuid4(),
        kind,
        seeded.workspace_sid,
        seeded.reservation_sids[index],
        task_sid=seeded.task_sids[index % 2],
        worker_sid=seeded.worker_sids[index % 2],
        correlation_id=str(fields.pop("correlation_id", seeded.correlation_id)),
        producer="audit-tests",
        **fields,  # type: ignore[arg-type]
    )


def apply(ledger: PostgresLedgerWriter, act: Action, from_status: str, to_status: str, etag: int) -> None:
    ledger.receive(act)
    ledger.append(Attempt(act.action_id, attempt=1, etag_before=str(etag), http_status=200))
    ledger.append(
        Transition(
            act.reservation_sid,
            from_status=from_status,
            to_status=to_status,
            etag_before=str(etag),
            etag_after=str(etag + 1),
            action_id=act.action_id,
            outcome=Outcome.APPLIED,
            workspace_sid=act.workspace_sid,
            task_sid=act.task_sid,
            worker_sid=act.worker_sid,
            attempt=1,
            http_status=200,
        )
    )


def seed(ledger: PostgresLedgerWriter) -> Seeded:
    """accept+complete on reservation 0, accept on 1, a failed (404, code 20404) accept on 2."""
    seeded = Seeded()
    first = action(seeded, 0)
    apply(ledger, first, "pending", "accepted", 1)
    done = action(seeded, 0, ActionKind.COMPLETE)
    apply(ledger, done, "accepted", "completed", 2)
    second = action(seeded, 1, params={"to": "+15551230000"})
    apply(ledger, second, "pending", "accepted", 1)
    seeded.applied = [first.action_id, done.action_id, second.action_id]
    broken = action(seeded, 2, correlation_id="other")
    ledger.receive(broken)
    ledger.append(Attempt(broken.action_id, attempt=1, http_status=404, twilio_error_code=20404))
    ledger.append(Settle(broken.action_id, Outcome.FAILED, http_status=404, twilio_error_code=20404))
    seeded.failed = broken.action_id
    return seeded


@pytest.fixture(scope="module")
def writer(db_url: str) -> Iterator[PostgresLedgerWriter]:
    connector = Connector(db_url, Role.WRITER, min_size=1, max_size=4)
    connector.open()
    with PostgresLedgerWriter(connector, PII_KEY) as opened:
        yield opened


@pytest.fixture(scope="module")
def reader(db_url: str) -> Iterator[LedgerReader]:
    connector = Connector(db_url, Role.READER, min_size=1, max_size=4)
    connector.open()
    with LedgerReader(connector, PII_KEY) as opened:
        yield opened


SEEDED_ROWS = 12  # three applied actions of three rows each (received, attempt, the settling
# transition: migration 0013), and a failed one of three (received, attempt, outcome)


@pytest.fixture(scope="module")
def seeded(writer: PostgresLedgerWriter, reader: LedgerReader) -> Seeded:
    done = seed(writer)
    eventually(
        lambda: reader.history(workspace_sid=done.workspace_sid),
        lambda rows: len(rows) == SEEDED_ROWS,
    )
    return done


@pytest.fixture(scope="module")
def client(db_url: str, seeded: Seeded) -> Iterator[TestClient]:
    """The API exactly as ``reservations audit-api`` builds it: its own reader pool, a token."""
    app = create_app(AuditApiConfig(db_url, TOKEN, pool_max=4))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as test_client:
        yield test_client
