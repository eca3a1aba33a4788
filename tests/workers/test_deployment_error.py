"""A deployment error (the ledger refuses the workers' role) must not eat messages: the worker
says so, stops taking work from the apply queue and hands the action back; once the grant is
restored, a worker applies it. Before, the task re-raised and Celery acknowledged the message:
2 of 2 actions were lost without an outcome or a dead letter."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.support.e2e import action_for, wait_for_outcome
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

RECEIVE = (
    "ledger.record_received(uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text,"
    " text, integer, text)"  # the trace id since migration 0003
)


@pytest.mark.acceptance
def test_a_revoked_privilege_stops_the_worker_and_loses_nothing(
    celery_app: Any, worker_env: dict[str, str], db_url: str, admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservation = admin.create_reservation()
    action = action_for(reservation)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"REVOKE EXECUTE ON FUNCTION {RECEIVE} FROM reservations_writer")
    try:
        with WorkerProcess(worker_env, concurrency=2) as refused:
            celery_app.enqueue(action)
            deadline = time.monotonic() + 30
            while "refuses this worker's role" not in refused.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "refuses this worker's role" in refused.log()
            time.sleep(1.0)
            assert ledger.action(action.action_id) is None  # nothing recorded, nothing applied
            assert admin.reservation(reservation.sid).status == "pending"
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"GRANT EXECUTE ON FUNCTION {RECEIVE} TO reservations_writer")
    with WorkerProcess(worker_env, concurrency=2):
        record = wait_for_outcome(ledger, action.action_id)
    assert record.outcome == "applied"
