"""Exactly-once under crashes and concurrency: a worker SIGKILLed mid-update, and many workers
racing on the same reservations. The emulator's transition log and the ledger must agree."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.support.e2e import action_for, wait_for_outcome
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess


def emulator_transitions(admin: EmulatorAdmin, sid: str) -> list[tuple[str, str]]:
    return [(t.from_status, t.to_status) for t in admin.transitions(sid) if t.from_status != t.to_status]


def ledger_transitions(ledger: LedgerReader, sid: str) -> list[tuple[str | None, str | None]]:
    """Status changes the ledger saw for a reservation (its first sighting is not a change)."""
    return [
        (e.from_status, e.to_status)
        for e in ledger.history(reservation_sid=sid)
        if e.kind == "transition" and e.from_status is not None and e.from_status != e.to_status
    ]


@pytest.mark.acceptance
def test_worker_killed_mid_update_still_applies_exactly_once(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservation = admin.create_reservation()
    admin.add_fault(
        "latency",
        operations=["update"],
        reservation_sids=[reservation.sid],
        latency_ms=2000,
        after_apply=True,
    )
    action = action_for(reservation)
    with WorkerProcess(worker_env, concurrency=2) as doomed:
        celery_app.enqueue(action)
        deadline = time.monotonic() + 30
        while admin.reservation_counts(reservation.sid).fetch.total < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)  # the update is now on the wire, held by the emulator's latency
        doomed.kill()
    time.sleep(2.0)  # the emulator finishes the orphaned update: TaskRouter applied it
    assert admin.reservation(reservation.sid).status == "accepted"
    assert ledger.action(action.action_id).outcome is None  # type: ignore[union-attr]

    admin.clear_faults()
    with WorkerProcess(worker_env, concurrency=2):
        record = wait_for_outcome(ledger, action.action_id)
    # The intent written before the update tells the next run it was ours: applied, linked to the
    # action (it used to be already_applied, "changed outside this run"), and sent once.
    assert record.outcome == "applied"
    assert admin.reservation_counts(reservation.sid).update.total == 1
    ours = [e for e in ledger.history(action_id=action.action_id) if e.kind == "transition"]
    assert [(e.from_status, e.to_status) for e in ours] == [("pending", "accepted")]
    assert emulator_transitions(admin, reservation.sid) == [("pending", "accepted")]
    assert ledger_transitions(ledger, reservation.sid) == [("pending", "accepted")]
    assert sum(e.settles for e in ledger.history(action_id=action.action_id)) == 1


@pytest.mark.acceptance
def test_many_workers_racing_on_the_same_reservations_lose_nothing(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservations = [admin.create_reservation() for _ in range(8)]
    actions = [
        action_for(r, kind)
        for r in reservations
        for kind in (ActionKind.ACCEPT, ActionKind.WRAPUP, ActionKind.COMPLETE)
    ]
    random.Random(5).shuffle(actions)
    with WorkerProcess(worker_env, concurrency=4), WorkerProcess(worker_env, concurrency=4):
        for action in actions:
            celery_app.enqueue(action)
        outcomes = {a.action_id: wait_for_outcome(ledger, a.action_id).outcome for a in actions}

    for action in actions:
        assert sum(e.settles for e in ledger.history(action_id=action.action_id)) == 1
    by_reservation: dict[str, dict[ActionKind, str | None]] = {}
    for action in actions:
        by_reservation.setdefault(action.reservation_sid, {})[action.action] = outcomes[action.action_id]
    for reservation in reservations:
        seen = by_reservation[reservation.sid]
        assert seen[ActionKind.ACCEPT] == "applied"
        assert seen[ActionKind.COMPLETE] == "applied"
        # wrapup lands between them, unless complete got there first (then it cannot any more).
        assert seen[ActionKind.WRAPUP] in {"applied", "invalid_transition"}
        assert admin.reservation(reservation.sid).status == "completed"
        assert emulator_transitions(admin, reservation.sid) == ledger_transitions(ledger, reservation.sid)
