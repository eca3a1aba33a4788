"""Graceful shutdown: SIGTERM a worker under load, start another, and nothing is lost or doubled.

Celery's warm shutdown finishes the tasks running at the signal; what the worker had taken but not
acknowledged (prefetched apply messages, the intake's plain-JSON messages) goes back to RabbitMQ
and the next worker applies it once."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.support.e2e import action_for, wait_for_outcome
from workers.broker.producer import Producer
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

ACTIONS = 60


def settled(ledger: LedgerReader, action_ids: list[Any]) -> int:
    return sum(1 for action_id in action_ids if (r := ledger.action(action_id)) and r.outcome is not None)


@pytest.mark.acceptance
def test_sigterm_under_load_finishes_or_hands_back_every_action(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservations = [admin.create_reservation() for _ in range(ACTIONS)]
    actions = [action_for(reservation) for reservation in reservations]
    ids = [action.action_id for action in actions]
    # Every call takes 100 ms: at any moment some actions are mid-fetch or mid-update.
    admin.add_fault("latency", latency_ms=100)
    first = WorkerProcess(worker_env, concurrency=8)
    with first:
        with Producer(worker_env["CELERY_BROKER_URL"]) as producer:
            for index, action in enumerate(actions):
                if index % 2:  # half through the plain-JSON intake, as producers publish
                    producer.publish(action)
                else:
                    celery_app.enqueue(action)
        deadline = time.monotonic() + 30
        while settled(ledger, ids) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        at_sigterm = settled(ledger, ids)
        returncode = first.stop(timeout=60)  # SIGTERM: Celery's warm shutdown
        log = first.log()
    done_by_first = settled(ledger, ids)
    assert returncode == 0, log
    assert "Warm shutdown" in log
    # The actions in flight at the signal were finished, not abandoned; the rest was handed back.
    assert at_sigterm < done_by_first < ACTIONS, (at_sigterm, done_by_first)

    with WorkerProcess(worker_env, concurrency=8):
        outcomes = {a.action_id: wait_for_outcome(ledger, a.action_id).outcome for a in actions}

    assert set(outcomes.values()) == {"applied"}
    for action in actions:
        rows = ledger.history(action_id=action.action_id)
        kinds = Counter(event.kind for event in rows)
        assert (kinds["outcome"], kinds["transition"]) == (0, 1), kinds  # the transition settles it
        assert [event.outcome for event in rows if event.settles] == ["applied"]
    for reservation in reservations:
        changes = [(t.from_status, t.to_status) for t in admin.transitions(reservation.sid)]
        assert [c for c in changes if c[0] != c[1]] == [("pending", "accepted")], reservation.sid
        assert admin.reservation_counts(reservation.sid).update.total == 1, reservation.sid
