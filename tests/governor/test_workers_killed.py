"""Real worker processes under one budget: a worker SIGKILLed mid-run frees its share when its
lease expires, the survivor takes the whole budget, no request ever passes the account's limit,
and a worker that stops politely gives its share back at once."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.support.e2e import action_for, wait_for_outcome
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID
from workers.testing.processes import WorkerProcess

BUDGET = 6
LEASE_SECONDS = 3.0
DEADLINE = 60.0


def _leases(db_url: str) -> dict[int, tuple[int, datetime]]:
    """Each live worker process's lease (pid -> granted, expires_at), as the database has it."""
    with connect(db_url, Role.READER) as conn:
        rows = conn.execute(
            "SELECT holder, granted, expires_at FROM ledger.taskrouter_leases WHERE account_sid = %s",
            [EMULATOR_ACCOUNT_SID],
        ).fetchall()
    return {int(holder.split(":")[-2]): (granted, expires) for holder, granted, expires in rows}


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        time.sleep(0.05)


@pytest.mark.acceptance
def test_a_killed_workers_share_is_free_once_its_lease_expires(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader, db_url: str
) -> None:
    env = {
        **worker_env,
        "TASKROUTER_MAX_CONCURRENCY": str(BUDGET),
        "TASKROUTER_RESERVED_CONCURRENCY": "0",
        "TASKROUTER_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    admin.set_concurrency(BUDGET)  # the account's limit is exactly the fleet's budget
    admin.add_fault("latency", latency_ms=200)
    reservations = [admin.create_reservation() for _ in range(40)]
    actions = [action_for(r) for r in reservations]
    with WorkerProcess(env, concurrency=8) as doomed, WorkerProcess(env, concurrency=8) as survivor:
        assert doomed.process is not None
        assert survivor.process is not None
        for action in actions:
            celery_app.enqueue(action)
        pids = (doomed.process.pid, survivor.process.pid)
        # Both are busy and share the budget.
        _until(
            lambda: all(_leases(db_url).get(pid, (0, None))[0] > 0 for pid in pids),
            "both workers hold a share",
        )
        doomed.kill()
        with connect(db_url, None) as conn:  # the database's clock, as the leases use
            killed_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        dead = _leases(db_url).get(doomed.process.pid)
        # Its last renewal came before the kill: it expires no later than the lease time after it
        # (if a busy machine let it expire and go already, so much the better).
        assert dead is None or dead[1] <= killed_at + timedelta(seconds=LEASE_SECONDS)
        # Then it is dropped, and the survivor leases the whole budget.
        alone = survivor.process.pid
        _until(
            lambda: {pid: granted for pid, (granted, _) in _leases(db_url).items()} == {alone: BUDGET},
            "the dead worker's lease is gone and the survivor holds the whole budget",
        )
        for action in actions:
            assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
    # The survivor stopped politely (SIGTERM): it gave its share back rather than let it expire.
    assert _leases(db_url) == {}
    limit = admin.concurrency()
    assert limit["refused"] == 0  # never a 429: the fleet never passed the account's limit
    assert limit["peak"] <= BUDGET
