"""Actions applied end to end: real RabbitMQ, real PostgreSQL, the emulator over HTTP, and a real
Celery worker process (threads pool)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.e2e import action_for, wait_for_outcome
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

CALL = {"call_from": "+15550001111", "call_url": "https://example.test/twiml"}


@pytest.mark.parametrize(
    ("kind", "start", "params", "end"),
    [
        (ActionKind.ACCEPT, "pending", {}, "accepted"),
        (ActionKind.REJECT, "pending", {"worker_activity_sid": "WA" + "1" * 32}, "rejected"),
        (ActionKind.WRAPUP, "accepted", {}, "wrapping"),
        (ActionKind.COMPLETE, "accepted", {}, "completed"),
        (ActionKind.COMPLETE, "wrapping", {}, "completed"),
        (ActionKind.CONFERENCE, "pending", {"to": "client:alice", "from_": "+15550002222"}, "accepted"),
        (ActionKind.DEQUEUE, "pending", {"dequeue_from": "+15550003333"}, "accepted"),
        (ActionKind.CALL, "pending", {**CALL, "call_accept": True}, "accepted"),
        (ActionKind.CALL, "pending", CALL, "pending"),
        (
            ActionKind.REDIRECT,
            "pending",
            {
                "redirect_call_sid": "CA" + "2" * 32,
                "redirect_url": "https://example.test/r",
                "redirect_accept": True,
            },
            "accepted",
        ),
        (ActionKind.UPDATE, "pending", {"reservation_status": "accepted"}, "accepted"),
    ],
)
def test_each_action_is_applied_with_its_ledger_rows(
    celery_app: Any,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    kind: ActionKind,
    start: str,
    params: dict[str, Any],
    end: str,
) -> None:
    reservation = admin.create_reservation(status=start)
    action = action_for(reservation, kind, params=params)
    celery_app.enqueue(action)

    record = wait_for_outcome(ledger, action.action_id)
    assert record.outcome == "applied"
    assert admin.reservation(reservation.sid).status == end
    received, intent, transition = ledger.history(action_id=action.action_id)
    assert [row.kind for row in (received, intent, transition)] == ["received", "intent", "transition"]
    assert transition.outcome == "applied"  # the transition settles the action (migration 0013)
    # Written ahead of the update: the ETag it carried, where it was sent from and towards.
    assert (intent.etag_before, intent.from_status) == (transition.etag_before, start)
    assert intent.to_status == (end if end != start else None)
    assert (transition.from_status, transition.to_status) == (start, end)
    assert transition.etag_before == reservation.etag
    assert transition.etag_after is not None
    assert transition.http_status == 200
    assert transition.attempt == 1
    assert admin.reservation_counts(reservation.sid).update.total == 1
    projected = ledger.reservation(reservation.sid)
    assert projected is not None
    assert (projected.status, projected.etag) == (end, transition.etag_after)


def test_worker_scoped_action_is_applied(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservation = admin.create_reservation()
    action = action_for(reservation, task_sid=None, worker_sid=reservation.worker_sid)
    celery_app.enqueue(action)
    assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
    assert admin.reservation(reservation.sid).status == "accepted"
