"""The repository API the workers use: receipts, attempts, transitions, outcomes, history."""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from tests.ledger.conftest import PII_KEY, accept_applied, make_action, superuser
from workers.config import Settings
from workers.core.action import ActionKind
from workers.core.redaction import DEVELOPMENT_PII_KEY, pii_digest
from workers.core.sids import new_sid
from workers.errors import LedgerError, UnknownAction
from workers.ledger import projection
from workers.ledger.connector import connect
from workers.ledger.events import Attempt, Conflict, Redrive, RejectedInput, Settle, Transition
from workers.ledger.models import Cursor, EventKind, Outcome, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter


def test_a_second_receipt_of_an_action_changes_nothing(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    action = make_action()
    first = writer.receive(action)
    second = writer.receive(action)
    assert first.created
    assert not second.created
    assert second.outcome is None
    with superuser(db_url) as conn:
        registry = conn.execute(
            "SELECT count(*) FROM ledger.actions WHERE action_id = %s", [action.action_id]
        )
        assert registry.fetchone() == (1,)
    assert [e.kind for e in reader.history(action_id=action.action_id)] == ["received"]


def test_concurrent_receipts_of_one_action_register_it_once(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    action = make_action()
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda _: writer.receive(action), range(8)))
    assert sum(r.created for r in receipts) == 1
    assert len(reader.history(action_id=action.action_id)) == 1


def test_a_repeated_receipt_returns_the_known_outcome(writer: PostgresLedgerWriter) -> None:
    action = make_action()
    writer.receive(action)
    writer.append(Settle(action.action_id, Outcome.EXPIRED, detail="past not_after"))
    receipt = writer.receive(action)
    assert not receipt.created
    assert receipt.outcome == "expired"


def test_attempt_transition_and_outcome(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    action = make_action(action=ActionKind.ACCEPT)
    writer.receive(action)
    writer.append(
        Attempt(
            action.action_id,
            attempt=1,
            etag_before="7",
            http_status=412,
            twilio_request_id="RQ1",
            duration_ms=30,
        )
    )
    writer.append(Conflict(action.action_id, attempt=1, etag_before="7", etag_after="8", to_status="pending"))
    writer.append(Attempt(action.action_id, attempt=2, etag_before="8", http_status=200, duration_ms=25))
    result = writer.append(
        Transition(
            action.reservation_sid,
            action_id=action.action_id,
            from_status="pending",
            to_status="accepted",
            etag_before="8",
            etag_after="9",
            attempt=2,
            http_status=200,
            outcome=Outcome.APPLIED,
        )
    )
    assert result.outcome == "applied"
    assert result.outcome_position is not None
    state = reader.reservation(action.reservation_sid)
    assert state is not None
    assert (state.status, state.etag, state.last_position) == ("accepted", "9", result.transition_position)
    assert (state.task_sid, state.worker_sid, state.workspace_sid) == (
        action.task_sid,
        action.worker_sid,
        action.workspace_sid,
    )
    record = reader.action(action.action_id)
    assert record is not None
    assert record.outcome == "applied"
    assert record.attempts == 2
    history = reader.history(reservation_sid=action.reservation_sid)
    assert [e.kind for e in history] == [
        "received",
        "attempt",
        "conflict",
        "attempt",
        "transition",
    ]
    assert history[-1].outcome == "applied"  # the transition settles the action (0013)
    assert result.outcome_position == result.transition_position
    assert [e.chain_seq for e in history] == [1, 2, 3, 4, 5]
    conflict = history[2]
    assert (conflict.http_status, conflict.etag_before, conflict.etag_after) == (412, "7", "8")
    transition = history[4]
    assert (transition.from_status, transition.to_status, transition.correlation_id) == (
        "pending",
        "accepted",
        action.correlation_id,
    )
    assert transition.worker_host
    assert transition.worker_pid
    assert history == sorted(history, key=lambda e: e.cursor)


def test_the_first_outcome_wins(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    action = make_action()
    writer.receive(action)
    first = writer.append(Settle(action.action_id, Outcome.FAILED, http_status=404, twilio_error_code=20404))
    again = writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED))
    assert first.outcome == "failed"
    assert first.outcome_position is not None
    assert again.outcome == "failed"
    assert again.outcome_position is None
    outcomes = [e for e in reader.history(action_id=action.action_id) if e.kind == EventKind.OUTCOME]
    assert [(e.outcome, e.http_status, e.twilio_error_code) for e in outcomes] == [("failed", 404, 20404)]


def test_only_the_first_outcome_is_on_a_row_whatever_settles_it(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    """The transition that settles an action carries its outcome (migration 0013); a transition
    of an action that had settled already is appended without one, so exactly one row of an
    action says how it ended, and it says what the registry says."""
    action = make_action()
    writer.receive(action)
    writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED, detail="retries exhausted"))
    late = writer.append(
        Transition(
            action.reservation_sid,
            action_id=action.action_id,
            from_status="pending",
            to_status="accepted",
            etag_before="1",
            etag_after="2",
            outcome=Outcome.APPLIED,
        )
    )
    assert (late.appended, late.outcome_position, late.outcome) == (True, None, "dead_lettered")
    rows = reader.history(action_id=action.action_id)
    assert [(e.kind, e.outcome) for e in rows] == [
        ("received", None),
        ("outcome", "dead_lettered"),
        ("transition", None),
    ]
    applied = accept_applied(writer)
    settling = [e for e in reader.history(action_id=applied.action_id) if e.settles]
    assert [(e.kind, e.outcome) for e in settling] == [("transition", "applied")]
    record = reader.action(applied.action_id)
    assert record is not None
    assert record.outcome == "applied"


def test_a_redrive_is_counted_and_the_outcome_stays(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    action = make_action()
    writer.receive(action)
    writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED))
    writer.append(Redrive(action.action_id, detail="operator redrive"))
    record = reader.action(action.action_id)
    assert record is not None
    assert record.outcome == "dead_lettered"  # the copy runs under a new action_id
    assert record.redrives == 1
    writer.append(Settle(action.action_id, Outcome.ALREADY_APPLIED))  # a late one: not appended
    kinds = [(e.kind, e.outcome) for e in reader.history(action_id=action.action_id)]
    assert kinds == [("received", None), ("outcome", "dead_lettered"), ("redrive", None)]


def test_steps_of_an_unknown_action_are_refused(writer: PostgresLedgerWriter) -> None:
    unknown = uuid.uuid4()
    with pytest.raises(UnknownAction) as caught:
        writer.append(Attempt(unknown, attempt=1))
    assert caught.value.action_id == str(unknown)
    with pytest.raises(UnknownAction):
        writer.append(Settle(unknown, Outcome.FAILED))
    with pytest.raises(UnknownAction):
        writer.append(
            Transition(
                new_sid("WR"),
                action_id=unknown,
                from_status=None,
                to_status="timeout",
                etag_before=None,
                etag_after="1",
            )
        )


def test_an_observed_transition_needs_no_action(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    sid = new_sid("WR")
    writer.append(Transition(sid, from_status=None, to_status="pending", etag_before=None, etag_after="1"))
    result = writer.append(
        Transition(sid, from_status="pending", to_status="timeout", etag_before="1", etag_after="2")
    )
    assert result.outcome is None
    assert result.outcome_position is None
    state = reader.reservation(sid)
    assert state is not None
    assert (state.status, state.etag) == ("timeout", "2")
    assert reader.reservation(new_sid("WR")) is None


def test_rejected_input_keeps_only_what_is_safe(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    action_id = uuid.uuid4()
    good_sid = new_sid("WR")
    message = {
        "schema": "reservation-action/v1",
        "action_id": str(action_id),
        "action": "accept",
        "reservation_sid": good_sid,
        "workspace_sid": "not-a-sid",
        "params": {"call_to": "+15550001111", "sip_auth_password": "hunter2", "call_timeout": "abc"},
        "surprise": "+15550002222",
    }
    position = writer.append(RejectedInput(message, "params.call_timeout: not an integer"))
    [event] = reader.history(action_id=action_id)
    assert event.position == position
    assert event.kind == "rejected_input"
    assert event.outcome == "rejected_input"
    assert event.reservation_sid == good_sid
    assert event.workspace_sid is None
    assert event.params is not None
    assert event.params["call_to"] == pii_digest("+15550001111", PII_KEY)
    assert "sip_auth_password" not in event.params
    assert event.params["unknown_fields"] == {"surprise": pii_digest("+15550002222", PII_KEY)}
    record = reader.action(action_id)
    assert record is not None
    assert record.outcome == "rejected_input"
    garbage = writer.append(RejectedInput(None, "not JSON"))
    [row] = [e for e in reader.history(limit=10_000) if e.position == garbage]
    assert row.chain_key == "rejected_input"
    assert row.detail == "not JSON"


def test_history_by_every_dimension(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    task, worker, workspace = new_sid("WT"), new_sid("WK"), new_sid("WS")
    a = make_action(task_sid=task, worker_sid=worker, workspace_sid=workspace, correlation_id="flow-1")
    b = make_action(task_sid=task, workspace_sid=workspace, correlation_id="flow-1")
    c = make_action(worker_sid=worker, workspace_sid=workspace)
    for action in (a, b, c):
        writer.receive(action)
    ids = lambda events: {e.action_id for e in events}  # noqa: E731
    assert ids(reader.history(reservation_sid=a.reservation_sid)) == {a.action_id}
    assert ids(reader.history(task_sid=task)) == {a.action_id, b.action_id}
    assert ids(reader.history(worker_sid=worker)) == {a.action_id, c.action_id}
    assert ids(reader.history(workspace_sid=workspace)) == {a.action_id, b.action_id, c.action_id}
    assert ids(reader.history(action_id=b.action_id)) == {b.action_id}
    assert ids(reader.history(correlation_id="flow-1", task_sid=task)) == {a.action_id, b.action_id}
    everything = reader.history(workspace_sid=workspace)
    first, last = everything[0].recorded_at, everything[-1].recorded_at
    assert ids(reader.history(workspace_sid=workspace, since=first, until=last)) == {a.action_id, b.action_id}
    assert ids(reader.history(workspace_sid=workspace, since=last)) == {c.action_id}
    assert reader.history(workspace_sid=workspace, until=first - timedelta(seconds=1)) == []


def test_history_pages_with_a_cursor(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    workspace = new_sid("WS")
    for _ in range(7):
        writer.receive(make_action(workspace_sid=workspace))
    seen = []
    cursor: Cursor | None = None
    while page := reader.history(workspace_sid=workspace, after=cursor, limit=3):
        seen.extend(page)
        cursor = page[-1].cursor
    assert len(seen) == 7
    assert seen == reader.history(workspace_sid=workspace)
    assert Cursor.parse(str(cursor)) == cursor


def test_an_auditor_finds_rows_by_a_known_pii_value(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    number = f"+1555{uuid.uuid4().int % 10**7:07d}"
    action = make_action(action=ActionKind.DEQUEUE, params={"dequeue_from": number})
    other = make_action(action=ActionKind.CALL, params={"call_to": number, "call_from": "+15550000000"})
    writer.receive(action)
    writer.receive(other)
    found = reader.history(pii_value=number)
    assert {e.action_id for e in found} == {action.action_id, other.action_id}


def test_rebuilding_the_projection_from_the_ledger_gives_the_same_projection(
    writer: PostgresLedgerWriter, db_url: str
) -> None:
    for _ in range(5):
        action = make_action()
        accept_applied(writer, action)
        writer.append(
            Transition(
                action.reservation_sid,
                from_status="accepted",
                to_status="wrapping",
                etag_before="2",
                etag_after="3",
            )
        )
    with connect(db_url, Role.READER) as conn:
        stored, rebuilt = projection.current(conn), projection.rebuild(conn)
    assert rebuilt == stored
    assert len(rebuilt) >= 5
    with superuser(db_url) as conn:
        conn.execute("UPDATE ledger.reservations SET status = 'completed', etag = 'bogus'")
    with connect(db_url, Role.READER) as conn:
        assert len(projection.differences(projection.current(conn), projection.rebuild(conn))) == len(stored)
    with connect(db_url, Role.OWNER) as conn:
        projection.replace(conn, projection.rebuild(conn))
    with connect(db_url, Role.READER) as conn:
        assert projection.current(conn) == stored


def test_a_transition_must_concern_the_actions_reservation(writer: PostgresLedgerWriter) -> None:
    action = make_action()
    writer.receive(action)
    with pytest.raises(LedgerError, match="is for reservation"):
        writer.append(
            Transition(
                new_sid("WR"),
                action_id=action.action_id,
                from_status="pending",
                to_status="accepted",
                etag_before="1",
                etag_after="2",
            )
        )


def test_from_settings_warns_about_the_development_key(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(database_url=db_url, ledger_pii_key=None)
    with (
        caplog.at_level(logging.WARNING),
        PostgresLedgerWriter.from_settings(settings, max_size=1) as writer,
        LedgerReader.from_settings(settings, max_size=1) as reader,
    ):
        action = make_action(params={"call_to": "+15559990000"})
        writer.receive(action)
        record = reader.action(action.action_id)
    assert "LEDGER_PII_KEY is unset" in caplog.text
    assert record is not None
    assert record.params == {"call_to": pii_digest("+15559990000", DEVELOPMENT_PII_KEY)}
