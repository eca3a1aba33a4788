"""Where the ledger learnt each transition (``source``), the trace of each row (``trace_id``),
and one row per transition however many ways it is learnt (migration 0003)."""

from __future__ import annotations

import pytest

from tests.ledger.conftest import accept_applied, make_action, superuser
from workers.core.state_machine import Status, status_rank
from workers.errors import LedgerError, LedgerPermissionDenied
from workers.ledger import projection
from workers.ledger.connector import connect
from workers.ledger.events import Attempt, Conflict, Intent, Redrive, RejectedInput, Settle, Transition
from workers.ledger.models import Outcome, Role, Source
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _event(sid: str, to_status: str, **fields: object) -> Transition:
    """A transition TaskRouter reported (no ETag: events carry none)."""
    return Transition(
        sid,
        from_status=None,
        to_status=to_status,
        etag_before=None,
        etag_after=None,
        source=Source.EVENT,
        **fields,  # type: ignore[arg-type]
    )


def _transitions(reader: LedgerReader, sid: str) -> list[tuple[str | None, str | None, str | None]]:
    return [
        (e.from_status, e.to_status, e.source)
        for e in reader.history(reservation_sid=sid)
        if e.kind == "transition"
    ]


def test_every_write_carries_its_trace_id(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    action = make_action()
    writer.receive(action, trace_id=TRACE)
    writer.append(Intent(action.action_id, 1, "1", "pending", "accepted", {}, trace_id=TRACE))
    writer.append(Attempt(action.action_id, attempt=1, etag_before="1", http_status=429, trace_id=TRACE))
    writer.append(Conflict(action.action_id, attempt=1, etag_before="1", etag_after="2", trace_id=TRACE))
    writer.append(
        Transition(
            action.reservation_sid,
            from_status="pending",
            to_status="accepted",
            etag_before="2",
            etag_after="3",
            action_id=action.action_id,
            outcome=Outcome.APPLIED,
            trace_id=TRACE,
        )
    )
    writer.append(Redrive(action.action_id, trace_id=TRACE))
    other = make_action()
    writer.receive(other)
    writer.append(Settle(other.action_id, Outcome.FAILED, http_status=404, trace_id=TRACE))
    writer.append(RejectedInput({"reservation_sid": action.reservation_sid}, "broken", trace_id=TRACE))
    mine = reader.history(reservation_sid=action.reservation_sid)
    assert [(e.kind, e.trace_id) for e in mine] == [
        (kind, TRACE)
        for kind in (
            "received",
            "intent",
            "attempt",
            "conflict",
            "transition",
            "redrive",
            "rejected_input",
        )
    ]
    assert [(e.kind, e.trace_id) for e in reader.history(reservation_sid=other.reservation_sid)] == [
        ("received", None),
        ("outcome", TRACE),
    ]


@pytest.mark.parametrize(
    "trace_id", ["4BF92F3577B34DA6A3CE929D0E0E4736", "00000000000000000000000000000000", "abc"]
)
def test_a_malformed_trace_id_is_refused(writer: PostgresLedgerWriter, trace_id: str) -> None:
    with pytest.raises(LedgerError):
        writer.receive(make_action(), trace_id=trace_id)


def test_each_transition_says_where_the_ledger_learnt_it(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    action = accept_applied(writer)
    sid = action.reservation_sid
    writer.append(
        Transition(sid, from_status="accepted", to_status="wrapping", etag_before="2", etag_after="3")
    )
    writer.append(_event(sid, "completed"))
    assert _transitions(reader, sid) == [
        ("pending", "accepted", "action"),
        ("accepted", "wrapping", "fetch"),
        ("wrapping", "completed", "event"),
    ]
    assert {e.source for e in reader.history(reservation_sid=sid) if e.kind != "transition"} == {None}
    with superuser(db_url) as conn, pytest.raises(Exception, match="events_source_kind_check"):
        conn.execute(
            "INSERT INTO ledger.events (kind, reservation_sid, source) VALUES ('outcome', %s, 'event')", [sid]
        )


def test_our_accept_and_its_event_are_one_row_whichever_comes_first(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    # The answer first: the event finds the transition recorded.
    first = accept_applied(writer)
    echoed = writer.append(_event(first.reservation_sid, "accepted"))
    assert not echoed.appended
    assert _transitions(reader, first.reservation_sid) == [("pending", "accepted", "action")]
    # The event first: the answer settles the action on the event's row, which its outcome names.
    second = make_action()
    writer.receive(second)
    seen = writer.append(_event(second.reservation_sid, "pending"))
    heard = writer.append(_event(second.reservation_sid, "accepted"))
    answer = writer.append(
        Transition(
            second.reservation_sid,
            from_status="pending",
            to_status="accepted",
            etag_before="1",
            etag_after="2",
            action_id=second.action_id,
            outcome=Outcome.APPLIED,
        )
    )
    assert (seen.appended, heard.appended, answer.appended) == (True, True, False)
    assert (answer.transition_position, answer.outcome) == (heard.transition_position, "applied")
    rows = reader.history(reservation_sid=second.reservation_sid)
    assert _transitions(reader, second.reservation_sid) == [
        (None, "pending", "event"),
        ("pending", "accepted", "event"),
    ]
    outcome = next(e for e in rows if e.kind == "outcome")
    assert outcome.detail is not None
    assert f"position {heard.transition_position}" in outcome.detail
    record = reader.action(second.action_id)
    assert record is not None
    assert record.outcome == "applied"


def test_late_and_repeated_events_never_move_the_projection_backwards(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    action = make_action()
    sid = action.reservation_sid
    for status in (
        "completed",
        "accepted",
        "completed",
        "pending",
        "wrapping",
        "accepted",
    ):  # reordered, twice
        writer.append(_event(sid, status, workspace_sid=action.workspace_sid))
    assert _transitions(reader, sid) == [
        (None, "completed", "event"),
        (None, "accepted", "event"),
        (None, "pending", "event"),
        ("accepted", "wrapping", "event"),
    ]
    state = reader.reservation(sid)
    assert state is not None
    assert (state.status, state.etag) == ("completed", None)
    with connect(db_url, Role.READER) as conn:
        assert projection.rebuild(conn)[sid] == state


def test_an_event_makes_the_cached_etag_unknown(writer: PostgresLedgerWriter, reader: LedgerReader) -> None:
    action = accept_applied(writer)
    before = reader.reservation(action.reservation_sid)
    assert before is not None
    assert before.etag == "2"
    writer.append(_event(action.reservation_sid, "wrapping"))
    after = reader.reservation(action.reservation_sid)
    assert after is not None
    assert (after.status, after.etag) == ("wrapping", None)


def test_the_ledgers_status_order_is_the_state_machines(db_url: str) -> None:
    with superuser(db_url) as conn:
        ranks = dict(
            conn.execute("SELECT s, ledger.status_rank(s) FROM unnest(%s::text[]) AS s", [list(Status)])
        )
    assert ranks == {status.value: status_rank(status) for status in Status}


def test_the_writer_appends_only_through_the_new_functions_and_the_reader_not_at_all(db_url: str) -> None:
    action = make_action()
    settle = (
        "SELECT ledger.settle(a, 'applied', NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
        " FROM ledger.actions a LIMIT 1"
    )
    transition = (
        "SELECT * FROM ledger.record_transition(NULL, %s, NULL, NULL, NULL, NULL, 'pending', NULL, NULL,"
        " NULL, NULL, NULL, NULL, NULL, NULL, 'h', 1, 'event', NULL)"
    )
    with pytest.raises(LedgerPermissionDenied), connect(db_url, Role.WRITER) as conn:
        conn.execute(settle)
    with pytest.raises(LedgerPermissionDenied), connect(db_url, Role.READER) as conn:
        conn.execute(transition, [action.reservation_sid])
    with connect(db_url, Role.WRITER) as conn:
        assert conn.execute(transition, [action.reservation_sid]).fetchone() is not None
