"""End-to-end fixtures (a pytest plugin, loaded by tests/conftest.py): the emulator in strict-header
mode, a migrated ledger, a private RabbitMQ vhost and a real Celery worker process pointed at all
three. Module-scoped: each test module gets its own database and worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from psycopg.rows import class_row

from workers.composition import create_app
from workers.config import Settings
from workers.core.action import Action, ActionKind
from workers.ledger.connector import Connector, connect
from workers.ledger.models import ActionRecord, LedgerRow, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EmulatorSettings, emulator_env
from workers.testing.processes import WorkerProcess

PII_KEY = "end-to-end-pii-key"
SETTLE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorSettings(strict_headers=True)) as server:
        yield server


@pytest.fixture
def admin(emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(emulator.base_url) as client:
        client.reset()
        yield client


@pytest.fixture(scope="module")
def worker_env(emulator: EmulatorServer, db_url: str, broker_url: str) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": db_url,
        **emulator_env(emulator.base_url),
        "LEDGER_PII_KEY": PII_KEY,
        "LEDGER_POOL_MAX": "20",
        # Short waits: the tests exercise the retry paths, not the production delays.
        "RETRY_BASE_DELAY": "0.2",
        "RETRY_MAX_DELAY": "1",
        "RETRY_MAX_RETRIES": "3",
        "RETRY_CONFLICT_PAUSE": "0.001",
        # The emulator answers at once (its slowest fault here is 2 s): no update outlives 3 s.
        "RETRY_IN_FLIGHT": "3",
    }


@pytest.fixture(scope="module")
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(worker_env)


@pytest.fixture(scope="module")
def celery_app(settings: Settings) -> Iterator[Any]:
    app = create_app(settings)
    yield app
    app.close()


@pytest.fixture(scope="module")
def ledger(db_url: str) -> Iterator[LedgerReader]:
    """The ledger as the tests read it (the reader role)."""
    connector = Connector(db_url, Role.READER, min_size=1, max_size=4)
    connector.open()
    with LedgerReader(connector, PII_KEY) as opened:
        yield opened


@pytest.fixture(scope="module")
def writer(db_url: str) -> Iterator[PostgresLedgerWriter]:
    """For the tests that write the ledger themselves (the writer role)."""
    connector = Connector(db_url, Role.WRITER, min_size=1, max_size=4)
    connector.open()
    with PostgresLedgerWriter(connector, PII_KEY) as opened:
        yield opened


@pytest.fixture(scope="module")
def worker(worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    with WorkerProcess(worker_env, pool="threads", concurrency=8) as process:
        yield process


def action_for(reservation: ReservationInfo, kind: ActionKind = ActionKind.ACCEPT, **fields: Any) -> Action:
    return Action(
        uuid.uuid4(),
        kind,
        reservation.workspace_sid,
        reservation.sid,
        task_sid=fields.pop("task_sid", reservation.task_sid),
        **fields,
    )


def wait_for_outcome(
    ledger: LedgerReader, action_id: uuid.UUID, timeout: float = SETTLE_TIMEOUT
) -> ActionRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = ledger.action(action_id)
        if record is not None and record.outcome is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"action {action_id} did not settle in {timeout} s")


Events = Callable[[uuid.UUID], list[LedgerRow]]


@pytest.fixture(scope="module")
def events(db_url: str) -> Events:
    """Every ledger row of one action, in ledger order, read straight from ``ledger.events``.

    ``LedgerReader.history`` shows rows only below the horizon of the oldest ledger writer still in
    flight (stable paging for auditors, queries.sql ``history``), so a run still writing to the
    same ledger (another test's) holds an action's newest rows back for as long as it lasts,
    although its outcome is already in the registry. Once an action is settled all its
    transactions have committed, and this read is exact at once.
    """

    def read(action_id: uuid.UUID) -> list[LedgerRow]:
        with connect(db_url, None) as conn, conn.cursor(row_factory=class_row(LedgerRow)) as cur:
            cur.execute(ACTION_EVENTS, {"action_id": action_id})
            return cur.fetchall()

    return read


ACTION_EVENTS = "SELECT * FROM ledger.events WHERE action_id = %(action_id)s ORDER BY tx_id, position"

Settle = Callable[[uuid.UUID], ActionRecord]
