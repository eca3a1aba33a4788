"""The ledger writer's contract: what the applier relies on, run against the in-memory fake and
against PostgreSQL, so that the fake the unit tests use cannot drift from the real writer."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.fakes import FakeLedgerWriter
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.sids import new_sid
from workers.errors import UnknownAction
from workers.ledger.connector import Connector
from workers.ledger.events import Attempt, Conflict, Redrive, RejectedInput, Settle, Transition
from workers.ledger.models import Role, Source
from workers.ledger.ports import LedgerWriter
from workers.ledger.writer import PostgresLedgerWriter


@pytest.fixture(params=["fake", pytest.param("postgres", marks=pytest.mark.integration)])
def writer(request: pytest.FixtureRequest) -> Iterator[LedgerWriter]:
    if request.param == "fake":
        yield FakeLedgerWriter()
        return
    db_url: str = request.getfixturevalue("db_url")
    connector = Connector(db_url, Role.WRITER, min_size=1, max_size=4)
    connector.open()
    with PostgresLedgerWriter(connector, "contract-pii-key") as real:
        yield real


def an_action(reservation_sid: str | None = None) -> Action:
    return Action(
        uuid.uuid4(),
        ActionKind.ACCEPT,
        new_sid("WS"),
        reservation_sid or new_sid("WR"),
        task_sid=new_sid("WT"),
        worker_sid=new_sid("WK"),
    )


def applied(action: Action, etag_before: str, etag_after: str, outcome: Outcome | None) -> Transition:
    return Transition(
        action.reservation_sid,
        from_status="pending",
        to_status="accepted",
        etag_before=etag_before,
        etag_after=etag_after,
        action_id=action.action_id,
        outcome=outcome,
        workspace_sid=action.workspace_sid,
        task_sid=action.task_sid,
        worker_sid=action.worker_sid,
        attempt=1,
        http_status=200,
    )


def test_receive_is_idempotent_and_reports_what_is_known(writer: LedgerWriter) -> None:
    action = an_action()
    first = writer.receive(action)
    assert (first.created, first.outcome, first.reservation) == (True, None, None)
    again = writer.receive(action)
    assert (again.created, again.outcome, again.reservation) == (False, None, None)


def test_receive_reports_the_outcome_and_the_projection(writer: LedgerWriter) -> None:
    action = an_action()
    writer.receive(action)
    writer.append(applied(action, "1", "2", Outcome.APPLIED))
    again = writer.receive(action)
    assert not again.created
    assert again.outcome == "applied"
    assert again.reservation is not None
    assert (again.reservation.status, again.reservation.etag) == ("accepted", "2")


def test_a_transition_updates_the_projection(writer: LedgerWriter) -> None:
    sid = new_sid("WR")
    seen = writer.append(
        Transition(sid, from_status=None, to_status="pending", etag_before=None, etag_after="1")
    )
    assert (seen.outcome_position, seen.outcome) == (None, None)
    action = an_action(sid)
    projected = writer.receive(action).reservation
    assert projected is not None
    assert (projected.reservation_sid, projected.status, projected.etag) == (sid, "pending", "1")
    assert projected.last_position == seen.transition_position
    moved = writer.append(applied(action, "1", "2", Outcome.APPLIED))
    projected = writer.receive(action).reservation
    assert projected is not None
    assert (projected.status, projected.etag, projected.last_position) == (
        "accepted",
        "2",
        moved.transition_position,
    )


def _reported(sid: str, to_status: str) -> Transition:
    """A transition TaskRouter's event reported: no ETag."""
    return Transition(
        sid, from_status=None, to_status=to_status, etag_before=None, etag_after=None, source=Source.EVENT
    )


def test_a_transition_an_event_also_reports_is_one_transition(writer: LedgerWriter) -> None:
    ours = an_action()
    writer.receive(ours)
    answer = writer.append(applied(ours, "1", "2", Outcome.APPLIED))
    echo = writer.append(_reported(ours.reservation_sid, "accepted"))
    assert (answer.appended, echo.appended) == (True, False)
    assert echo.transition_position == answer.transition_position
    heard_first = an_action()
    writer.receive(heard_first)
    heard = writer.append(_reported(heard_first.reservation_sid, "accepted"))
    late_answer = writer.append(applied(heard_first, "1", "2", Outcome.APPLIED))
    assert (heard.appended, late_answer.appended) == (True, False)
    assert (late_answer.transition_position, late_answer.outcome) == (heard.transition_position, "applied")
    assert late_answer.outcome_position is not None
    projected = writer.receive(heard_first).reservation
    assert projected is not None
    assert (projected.status, projected.etag) == ("accepted", None)  # an event leaves the ETag unknown


def test_a_transition_learnt_late_never_moves_the_projection_back(writer: LedgerWriter) -> None:
    action = an_action()
    writer.append(_reported(action.reservation_sid, "completed"))
    late = writer.append(_reported(action.reservation_sid, "accepted"))
    assert late.appended
    projected = writer.receive(action).reservation
    assert projected is not None
    assert projected.status == "completed"


def test_the_first_outcome_wins_with_a_transition(writer: LedgerWriter) -> None:
    action = an_action()
    writer.receive(action)
    first = writer.append(applied(action, "1", "2", Outcome.APPLIED))
    assert first.outcome == "applied"
    # The transition settles the action in its own row (migration 0013).
    assert first.outcome_position == first.transition_position
    late = writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED, detail="a late run"))
    assert (late.outcome_position, late.outcome) == (None, "applied")
    again = writer.append(applied(action, "2", "3", Outcome.ALREADY_APPLIED))
    assert (again.outcome_position, again.outcome) == (None, "applied")
    assert writer.receive(action).outcome == "applied"


def test_the_first_settlement_wins(writer: LedgerWriter) -> None:
    action = an_action()
    writer.receive(action)
    first = writer.append(Settle(action.action_id, Outcome.FAILED, http_status=404, twilio_error_code=20404))
    assert first.outcome == "failed"
    assert first.outcome_position is not None
    again = writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED))
    assert (again.outcome_position, again.outcome) == (None, "failed")


def test_a_redrive_keeps_the_outcome_the_copy_runs_under_a_new_action_id(writer: LedgerWriter) -> None:
    action = an_action()
    writer.receive(action)
    writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED))
    writer.append(Redrive(action.action_id, detail="operator redrive"))
    assert writer.receive(action).outcome == "dead_lettered"  # never cleared
    settled = writer.append(Settle(action.action_id, Outcome.ALREADY_APPLIED))
    assert (settled.outcome_position, settled.outcome) == (None, "dead_lettered")


def test_append_returns_positions_in_increasing_order(writer: LedgerWriter) -> None:
    action = an_action()
    writer.receive(action)
    positions = [
        writer.append(Attempt(action.action_id, attempt=1, etag_before="1", http_status=500)),
        writer.append(
            Conflict(action.action_id, attempt=2, etag_before="1", etag_after="2", to_status="pending")
        ),
        writer.append(applied(action, "2", "3", None)).transition_position,
    ]
    settled = writer.append(Settle(action.action_id, Outcome.APPLIED)).outcome_position
    assert settled is not None
    positions += [settled, writer.append(RejectedInput({"action": "transfer"}, "unknown action"))]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)


def test_steps_of_an_unknown_action_are_refused(writer: LedgerWriter) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(UnknownAction):
        writer.append(Attempt(unknown, attempt=1))
    with pytest.raises(UnknownAction):
        writer.append(Settle(unknown, Outcome.FAILED))


def test_the_lock_serialises_and_yields_a_writer(writer: LedgerWriter) -> None:
    action = an_action()
    inside = threading.Event()
    order: list[str] = []

    def second() -> None:
        inside.wait(5)
        with writer.lock(action.reservation_sid):
            order.append("second")

    other = threading.Thread(target=second)
    other.start()
    with writer.lock(action.reservation_sid) as locked:
        inside.set()
        time.sleep(0.2)  # the other thread is waiting for the lock meanwhile
        assert locked.receive(action).created
        locked.append(Attempt(action.action_id, attempt=1, http_status=200))
        order.append("first")
    other.join(5)
    assert order == ["first", "second"]
