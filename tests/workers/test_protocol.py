"""The If-Match protocol end to end: conflicts, races behind our back, faults, permanent errors
and exhausted retries, each with the ledger rows it must leave."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.support.broker import drain_dead_letters
from tests.support.e2e import Events, action_for, wait_for_outcome
from workers.broker.topology import ACTION_ID_HEADER, OUTCOME_HEADER, REASON_HEADER
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess


def kinds(events: Events, action_id: uuid.UUID) -> list[str]:
    return [event.kind for event in events(action_id)]


def test_stale_cached_etag_costs_one_412_then_applies(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    reservation = admin.create_reservation()
    accept = action_for(reservation)
    celery_app.enqueue(accept)
    wait_for_outcome(ledger, accept.action_id)
    admin.change(reservation.sid, "touch")  # another actor changes it: our cached ETag is stale
    admin.reset_counters()

    complete = action_for(reservation, ActionKind.COMPLETE)
    celery_app.enqueue(complete)
    assert wait_for_outcome(ledger, complete.action_id).outcome == "applied"
    assert kinds(events, complete.action_id) == [
        "received",
        "intent",
        "conflict",
        "intent",
        "transition",
    ]
    conflict = events(complete.action_id)[2]
    assert conflict.http_status == 412
    assert conflict.twilio_error_code == 20412
    touched = admin.transitions(reservation.sid)[-2]
    assert touched.to_status == "accepted"
    assert conflict.etag_after == str(touched.version_after)
    counts = admin.reservation_counts(reservation.sid)
    assert (counts.update.status(412), counts.update.status(200), counts.fetch.total) == (1, 1, 1)


def test_a_storm_of_412s_converges_and_every_conflict_is_in_the_ledger(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    reservations = [admin.create_reservation() for _ in range(12)]
    admin.add_fault("conflict_storm", rate=0.5, seed=11)
    actions = [action_for(r) for r in reservations]
    for action in actions:
        celery_app.enqueue(action)
    outcomes = [wait_for_outcome(ledger, a.action_id).outcome for a in actions]
    assert outcomes == ["applied"] * len(actions)
    for reservation, action in zip(reservations, actions, strict=True):
        counts = admin.reservation_counts(reservation.sid)
        conflicts = kinds(events, action.action_id).count("conflict")
        assert conflicts == counts.update.status(412)
        assert admin.reservation(reservation.sid).status == "accepted"
    assert sum(admin.reservation_counts(r.sid).update.status(412) for r in reservations) > 0


@pytest.mark.parametrize(
    ("behind_our_back", "outcome"),
    [("timeout", "invalid_transition"), ("rescind", "invalid_transition"), ("accept", "already_applied")],
)
def test_changed_behind_our_back_sends_nothing(
    celery_app: Any,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    behind_our_back: str,
    outcome: str,
) -> None:
    reservation = admin.create_reservation()
    admin.change(reservation.sid, behind_our_back)
    action = action_for(reservation)
    celery_app.enqueue(action)
    assert wait_for_outcome(ledger, action.action_id).outcome == outcome
    assert admin.reservation_counts(reservation.sid).update.total == 0


@pytest.mark.parametrize(
    ("fault", "options"),
    [
        ("throttle", {"retry_after": 1}),
        ("internal_error", {}),
        ("unavailable", {}),
        ("drop", {}),
        ("drop", {"after_apply": True}),
    ],
)
def test_transient_faults_are_retried_then_applied(
    celery_app: Any,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    events: Events,
    fault: str,
    options: dict[str, Any],
) -> None:
    reservation = admin.create_reservation()
    fault_id = admin.add_fault(fault, operations=["update"], reservation_sids=[reservation.sid], **options)
    action = action_for(reservation)
    celery_app.enqueue(action)
    # The first update fails; remove the fault once it has, and the retry must succeed.
    _wait_until(lambda: admin.reservation_counts(reservation.sid).update.total >= 1)
    admin.remove_fault(fault_id)
    record = wait_for_outcome(ledger, action.action_id)
    history = kinds(events, action.action_id)
    assert history[:3] == ["received", "intent", "attempt"]
    assert admin.reservation(reservation.sid).status == "accepted"
    transitions = [t for t in admin.transitions(reservation.sid) if t.from_status != t.to_status]
    assert len(transitions) == 1  # applied exactly once
    # Our update, even when its answer was lost after it landed: applied, the transition linked
    # to the action (it used to say already_applied, "changed outside this run").
    assert record.outcome == "applied"
    assert history[-1] == "transition"
    assert events(action.action_id)[-1].outcome == "applied"  # the transition settles it
    ours = [row for row in events(action.action_id) if row.kind == "transition"]
    assert len(ours) == 1
    if options.get("after_apply"):
        assert ours[0].detail is not None
        assert ours[0].detail.startswith("confirmed after a lost answer")


def test_a_call_whose_answer_is_lost_after_it_landed_is_indeterminate_and_never_sent_twice(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    """A call without call_accept changes no status: after a lost answer only the ETag says it
    landed, and not whose change it was. It used to be sent again: a second call to the agent."""
    drain_dead_letters(worker.env["CELERY_BROKER_URL"])
    reservation = admin.create_reservation()
    fault_id = admin.add_fault(
        "drop", operations=["update"], reservation_sids=[reservation.sid], after_apply=True
    )
    params = {"call_from": "+15550100009", "call_url": "https://example.test/twiml"}
    action = action_for(reservation, ActionKind.CALL, params=params)
    celery_app.enqueue(action)
    _wait_until(lambda: admin.reservation_counts(reservation.sid).update.total >= 1)
    admin.remove_fault(fault_id)
    record = wait_for_outcome(ledger, action.action_id)
    assert record.outcome == "indeterminate"
    assert admin.reservation_counts(reservation.sid).update.total == 1  # one call, not two
    assert kinds(events, action.action_id)[:3] == ["received", "intent", "attempt"]
    (letter,) = _wait_for_letters(worker, 1)
    assert letter.headers[OUTCOME_HEADER] == "indeterminate"
    reason = letter.headers[REASON_HEADER]
    assert "If-Match" in reason
    assert "now ETag" in reason


def test_unknown_reservation_fails_without_retry(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    reservation = admin.create_reservation()
    drain_dead_letters(worker.env["CELERY_BROKER_URL"])
    ghost = action_for(reservation)
    ghost = type(ghost)(
        uuid.uuid4(), ghost.action, ghost.workspace_sid, "WR" + "e" * 32, task_sid=ghost.task_sid
    )
    celery_app.enqueue(ghost)
    record = wait_for_outcome(ledger, ghost.action_id)
    assert record.outcome == "failed"
    outcome_row = events(ghost.action_id)[-1]
    assert (outcome_row.http_status, outcome_row.twilio_error_code) == (404, 20404)
    assert admin.counters()["requests"] == 1  # one fetch, no retry
    letters = _wait_for_letters(worker, 1)
    assert letters[0].headers[OUTCOME_HEADER] == "failed"
    assert letters[0].json()["action_id"] == str(ghost.action_id)


def test_a_parameter_the_schema_refuses_is_rejected_before_taskrouter_sees_it(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    """Handed straight to the apply task (skipping the intake), a message is still held to the
    schema: TaskRouter would answer 400; the task refuses it without a call."""
    reservation = admin.create_reservation()
    action = action_for(reservation, ActionKind.CONFERENCE, params={"max_participants": 900})
    celery_app.enqueue(action)
    assert wait_for_outcome(ledger, action.action_id).outcome == "rejected_input"
    counts = admin.reservation_counts(reservation.sid)
    assert counts.update.total == 0
    assert admin.reservation(reservation.sid).status == "pending"
    drain_dead_letters(worker.env["CELERY_BROKER_URL"])


def test_exhausted_retries_dead_letter_the_message_with_its_reason(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    drain_dead_letters(worker.env["CELERY_BROKER_URL"])
    reservation = admin.create_reservation()
    admin.add_fault("unavailable", operations=["update"], reservation_sids=[reservation.sid])
    action = action_for(reservation, correlation_id="corr-dead")
    celery_app.enqueue(action)
    record = wait_for_outcome(ledger, action.action_id)
    assert record.outcome == "dead_lettered"
    history = kinds(events, action.action_id)
    retries = int(worker.env["RETRY_MAX_RETRIES"])
    assert history.count("attempt") == retries + 1
    assert admin.reservation_counts(reservation.sid).update.total == retries + 1
    (letter,) = _wait_for_letters(worker, 1)
    assert letter.headers[ACTION_ID_HEADER] == str(action.action_id)
    assert letter.headers[OUTCOME_HEADER] == "dead_lettered"
    assert "retries exhausted" in letter.headers[REASON_HEADER]
    assert json.loads(letter.body) == action.to_message()


def test_the_same_action_id_twice_reaches_taskrouter_once(
    celery_app: Any, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, events: Events
) -> None:
    reservation = admin.create_reservation()
    action = action_for(reservation)
    celery_app.enqueue(action)
    celery_app.enqueue(action)
    assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
    _wait_until(lambda: Counter(e.kind for e in events(action.action_id))["received"] == 1)
    assert admin.reservation_counts(reservation.sid).update.total == 1
    assert Counter(kinds(events, action.action_id)) == {
        "received": 1,
        "intent": 1,
        "transition": 1,
    }


def _wait_until(condition: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _wait_for_letters(worker: WorkerProcess, count: int) -> list[Any]:
    import time

    letters: list[Any] = []
    deadline = time.monotonic() + 30
    while len(letters) < count and time.monotonic() < deadline:
        letters += drain_dead_letters(worker.env["CELERY_BROKER_URL"])
        time.sleep(0.1)
    assert len(letters) == count
    return letters
