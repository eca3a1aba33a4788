"""Migration 0012: an action's facts are stored on its received row and in the registry only, a
row's reservation SID as its chain key only, and every reader sees each row as before, rows
written before 0012 (which repeat them) included."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from tests.ledger.conftest import accept_applied, append_attempt_as_before_0012, make_action, superuser
from workers.ledger import projection
from workers.ledger.events import Attempt, Intent, RejectedInput, Settle
from workers.ledger.models import LedgerRow, Outcome
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import verify
from workers.ledger.writer import PostgresLedgerWriter

FACTS = ("action", "workspace_sid", "task_sid", "correlation_id", "producer")


def _stored(db_url: str, action_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with superuser(db_url) as conn:
        return conn.execute(
            "SELECT kind, action, workspace_sid, task_sid, correlation_id, producer FROM ledger.events"
            " WHERE action_id = %s ORDER BY position",
            [action_id],
        ).fetchall()


def _facts(row: LedgerRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in FACTS)


def test_rows_after_the_received_one_do_not_repeat_the_actions_facts(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    action = make_action()
    writer.receive(action)
    writer.append(Intent(action.action_id, 1, "1", "pending", "accepted", {}))
    writer.append(Attempt(action.action_id, attempt=1, etag_before="1", http_status=503))
    accept_applied(writer, action)
    stored = _stored(db_url, action.action_id)
    assert stored[0] == (
        "received",
        "accept",
        action.workspace_sid,
        action.task_sid,
        action.correlation_id,
        action.producer,
    )
    # The transition that settles the action carries its outcome (0013): no outcome row.
    assert [row[0] for row in stored[1:]] == ["intent", "attempt", "transition"]
    assert all(row[1:] == (None,) * 5 for row in stored[1:]), stored
    expected = ("accept", action.workspace_sid, action.task_sid, action.correlation_id, action.producer)
    rows = reader.history(action_id=action.action_id)
    assert [_facts(r) for r in rows] == [expected] * 4
    assert [r.outcome for r in rows] == [None, None, None, "applied"]
    mine = [r.position for r in rows]
    by_correlation = reader.history(correlation_id=action.correlation_id)
    by_workspace = reader.history(workspace_sid=action.workspace_sid)
    assert [r.position for r in reader.history(task_sid=action.task_sid)] == mine
    assert [r.position for r in by_correlation] == mine
    assert [r.position for r in by_workspace if r.action_id == action.action_id] == mine
    assert reader.history(reservation_sid=action.reservation_sid) == rows
    # A time range is read first when its rows are few (history_in_range): the same rows.
    since, until = rows[0].recorded_at, rows[-1].recorded_at + timedelta(microseconds=1)
    assert [r for r in reader.history(since=since, until=until) if r.action_id == action.action_id] == rows
    in_workspace = reader.history(since=since, until=until, workspace_sid=action.workspace_sid)
    assert [r for r in in_workspace if r.action_id == action.action_id] == rows


def test_rows_written_before_0012_read_and_verify_as_before(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    """A row that repeats the action's facts (as every row did before 0012) reads the same, is
    found by its correlation id and workspace, and its chain verifies."""
    action = make_action()
    writer.receive(action)
    append_attempt_as_before_0012(db_url, action.action_id)
    writer.append(Settle(action.action_id, Outcome.FAILED, http_status=404))
    stored = _stored(db_url, action.action_id)
    assert [row[0] for row in stored] == ["received", "attempt", "outcome"]
    assert stored[1][1:] == stored[0][1:]
    assert stored[2][1:] == (None,) * 5
    rows = reader.history(correlation_id=action.correlation_id)
    assert [r.kind for r in rows] == ["received", "attempt", "outcome"]
    assert reader.history(task_sid=action.task_sid) == rows
    assert len({_facts(r) for r in rows}) == 1
    assert [r.kind for r in reader.history(workspace_sid=action.workspace_sid)][-3:] == [
        "received",
        "attempt",
        "outcome",
    ]
    with superuser(db_url) as conn:
        assert [p for p in verify(conn) if p.chain_key == action.reservation_sid] == []


def test_a_rejected_input_keeps_its_own_facts(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    """A rejected message whose action id another message registered keeps what it carried: the
    registry's facts are not read into it."""
    action = make_action()
    writer.receive(action)
    message = {
        "action_id": str(action.action_id),
        "action": "accept",
        "reservation_sid": action.reservation_sid,
        "correlation_id": "other",
    }
    writer.append(RejectedInput(message, "broke the schema"))
    rows = reader.history(action_id=action.action_id)
    assert [r.kind for r in rows] == ["received", "rejected_input"]
    assert (rows[1].workspace_sid, rows[1].correlation_id, rows[1].producer) == (None, "other", None)
    assert [r.kind for r in reader.history(correlation_id="other")] == ["rejected_input"]
    assert [r.kind for r in reader.history(correlation_id=action.correlation_id)] == ["received"]


def test_the_projection_rebuilds_with_the_workspace_from_the_registry(
    fresh_writer: PostgresLedgerWriter, fresh_db_url: str
) -> None:
    """The rebuild folds transitions as history reads them: a transition of an action stores no
    workspace (0012), the registry gives it."""
    action = accept_applied(fresh_writer)
    with superuser(fresh_db_url) as conn:
        stored, rebuilt = projection.current(conn), projection.rebuild(conn)
    assert stored[action.reservation_sid].workspace_sid == action.workspace_sid
    assert projection.differences(stored, rebuilt) == []


def test_a_rows_reservation_sid_is_stored_once_as_its_chain_key(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    action = accept_applied(fresh_writer)
    fresh_writer.append(
        RejectedInput({"action": "accept", "reservation_sid": "not a sid"}, "broke the schema")
    )
    with superuser(fresh_db_url) as conn:
        stored = conn.execute(
            "SELECT DISTINCT chain_key, reservation_sid FROM ledger.events WHERE chain_key = %s",
            [action.reservation_sid],
        ).fetchall()
        # As a row written before 0012 (superuser, triggers off): both columns hold the SID.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO ledger.events (position, tx_id, chain_key, chain_seq, prev_hash, row_hash, kind,"
            " reservation_sid) VALUES (nextval('ledger.events_position_seq'), '3', 'WRold', 1, '\\x', '\\x',"
            " 'transition', 'WRold')"
        )
    assert stored == [(action.reservation_sid, None)]
    rows = fresh_reader.history(reservation_sid=action.reservation_sid)
    assert [(r.kind, r.reservation_sid) for r in rows] == [
        ("received", action.reservation_sid),
        ("transition", action.reservation_sid),
    ]
    rejected = fresh_reader.history(kind="rejected_input")[-1]
    assert (rejected.chain_key, rejected.reservation_sid) == ("rejected_input", None)
    assert [r.reservation_sid for r in fresh_reader.history(reservation_sid="WRold")] == ["WRold"]
    assert fresh_reader.history(reservation_sid="rejected_input") == []
