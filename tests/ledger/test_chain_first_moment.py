"""Migration 0018: a chain's head keeps the earliest recorded_at of its rows, and the write path's
look-ups in a reservation's chain read only the months from then on (not every partition of a
ledger kept for years), exactly: a row recorded before the chain's first appended row counts,
and a chain begun before 0018 is read in every month, as before."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from tests.ledger.conftest import make_action, open_writer, seal, superuser, waits_for
from workers.core.action import Action
from workers.core.sids import new_sid
from workers.ledger import partitions
from workers.ledger.connector import connect
from workers.ledger.events import Attempt, Transition
from workers.ledger.models import Role, Source
from workers.ledger.verify import verify, verify_since


def _head(url: str, chain_key: str) -> tuple[datetime | None, datetime]:
    """The chain's first moment as its head keeps it, and the earliest recorded_at of its rows."""
    with superuser(url) as conn:
        row = conn.execute(
            "SELECT h.first_recorded_at, (SELECT min(e.recorded_at) FROM ledger.events e"
            "  WHERE e.chain_key = h.chain_key) FROM ledger.chain_heads h WHERE h.chain_key = %s",
            [chain_key],
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _accepted(action: Action) -> Transition:
    """The action's own answer: pending to accepted."""
    return Transition(
        action.reservation_sid,
        from_status="pending",
        to_status="accepted",
        etag_before="1",
        etag_after="2",
        action_id=action.action_id,
        workspace_sid=action.workspace_sid,
        task_sid=action.task_sid,
        worker_sid=action.worker_sid,
        attempt=1,
        http_status=200,
    )


def _event_accepted(reservation_sid: str) -> Transition:
    """TaskRouter's event of the same transition."""
    return Transition(
        reservation_sid,
        from_status="pending",
        to_status="accepted",
        etag_before=None,
        etag_after="2",
        source=Source.EVENT,
    )


def _append_direct(conn: psycopg.Connection[Any], chain_key: str, detail: str, to_status: str) -> None:
    """TaskRouter's event of a transition, appended by a superuser straight into ledger.events:
    through the chain trigger like any other row (it sets recorded_at before it waits for the
    chain's lock)."""
    conn.execute(
        "INSERT INTO ledger.events (kind, reservation_sid, to_status, detail, source)"
        " VALUES ('transition', %s, %s, %s, 'event')",
        [chain_key, to_status, detail],
    )


def _event_transition_appended(url: str, chain_key: str, to_status: str) -> bool:
    """Whether record_transition appends TaskRouter's event of ``to_status`` to the chain (False:
    it found the chain's row of that event, however far back)."""
    with connect(url, Role.WRITER) as conn:
        row = conn.execute(
            "SELECT appended FROM ledger.record_transition(NULL, %s, NULL, NULL, NULL, NULL, %s, NULL,"
            " NULL, NULL, NULL, NULL, NULL, NULL, 'event again', 'tests', 1, 'event', NULL)",
            [chain_key, to_status],
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_the_head_keeps_the_chains_first_moment(db_url: str) -> None:
    action = make_action()
    with open_writer(db_url) as writer:
        writer.receive(action)
        first, earliest = _head(db_url, action.reservation_sid)
        assert first == earliest
        writer.append(
            Transition(
                action.reservation_sid,
                from_status=None,
                to_status="pending",
                etag_before=None,
                etag_after="1",
                source=Source.FETCH,
            )
        )
    assert _head(db_url, action.reservation_sid) == (first, earliest)


def test_a_row_recorded_before_the_chains_first_appended_row_moves_the_first_moment(db_url: str) -> None:
    """recorded_at is taken before the row waits for the chain's lock: a row that waited may be
    appended after one recorded later. The head keeps the earlier moment, or a look-up bounded by
    it would miss that row."""
    chain = new_sid("WR")
    waited: list[BaseException] = []
    with superuser(db_url) as holder, superuser(db_url) as late:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(1279607879, hashtext(%s))", [chain])  # the chain's lock

        def append_late() -> None:
            try:
                _append_direct(late, chain, "recorded first, appended second", "accepted")
            except BaseException as exc:  # reported to the test
                waited.append(exc)

        other = threading.Thread(target=append_late)
        other.start()
        if not waits_for(db_url, late.info.backend_pid, "advisory", 10):
            pytest.fail("the late row never waited for the chain's lock")
        _append_direct(holder, chain, "recorded second, appended first", "pending")
        holder.execute("COMMIT")
        other.join(10)
    assert not other.is_alive()
    assert not waited
    with superuser(db_url) as conn:
        rows = conn.execute(
            "SELECT detail, recorded_at FROM ledger.events WHERE chain_key = %s ORDER BY chain_seq", [chain]
        ).fetchall()
    assert [r[0] for r in rows] == ["recorded second, appended first", "recorded first, appended second"]
    assert rows[1][1] < rows[0][1]
    first, earliest = _head(db_url, chain)
    assert first == earliest == rows[1][1]
    assert not _event_transition_appended(db_url, chain, "accepted")  # found at the first moment
    assert not _event_transition_appended(db_url, chain, "pending")


def test_the_chains_first_row_is_found_by_the_bounded_look_up(db_url: str) -> None:
    """The row at the chain's very first moment is inside the bound: TaskRouter's event begins the
    chain, and the action's answer of the same transition is that row, not a second one."""
    action = make_action()
    with open_writer(db_url) as writer:
        writer.append(_event_accepted(action.reservation_sid))
        writer.receive(action)
        first, earliest = _head(db_url, action.reservation_sid)
        assert first == earliest
        result = writer.append(_accepted(action))
    assert not result.appended


def test_verify_reports_a_head_that_says_its_chain_began_later(fresh_db_url: str) -> None:
    """first_recorded_at is not hashed: a head edited to a later moment would hide the chain's
    earlier rows from the write path's look-ups (a transition recorded twice). The full verify and
    the incremental one both report it."""
    with open_writer(fresh_db_url) as writer:
        writer.receive(make_action())
        checkpoint = seal(fresh_db_url)
        action = make_action()
        writer.receive(action)
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify(conn) == []
    with superuser(fresh_db_url) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # the guards off
        conn.execute(
            "UPDATE ledger.chain_heads SET first_recorded_at = first_recorded_at + interval '1 microsecond'"
            " WHERE chain_key = %s",
            [action.reservation_sid],
        )
    with connect(fresh_db_url, Role.READER) as conn:
        found = verify(conn)
        since, _checked = verify_since(conn, checkpoint.checkpoint_id)
    for problems in (found, since):
        assert [(p.kind, p.chain_key) for p in problems] == [("altered", action.reservation_sid)]
        assert "the chain's head says it began at" in problems[0].message


def test_a_chain_begun_before_0018_keeps_no_first_moment_and_is_read_whole(db_url: str) -> None:
    """A head without a first moment (a chain begun before the migration) is read in every month:
    the next row must not give it one (its own would be too late), and an event's transition in
    it is still found."""
    action = make_action()
    with open_writer(db_url) as writer:
        writer.receive(action)
        writer.append(_event_accepted(action.reservation_sid))
        with superuser(db_url) as conn, conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")  # the guards off: a 0017 head
            conn.execute(
                "UPDATE ledger.chain_heads SET first_recorded_at = NULL WHERE chain_key = %s",
                [action.reservation_sid],
            )
        writer.append(Attempt(action.action_id, attempt=1, etag_before="1", http_status=503))
        assert _head(db_url, action.reservation_sid)[0] is None  # a row now has not given it one
        result = writer.append(_accepted(action))
    assert not result.appended  # the event's row is the transition
    assert _head(db_url, action.reservation_sid)[0] is None


def test_a_transition_of_a_chain_begun_this_month_reads_no_older_month(ledger_url: str) -> None:
    """On a ledger of three months of rows, recording a new reservation's transition probes the
    chain index of no month before the chain began (before 0018: every partition's)."""
    with connect(ledger_url, Role.READER) as conn:
        month_start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        listed = partitions.list_partitions(conn)
    older = {
        p.partition_name for p in listed if p.upper is not None and p.upper <= month_start and p.has_rows
    }
    current = next(p.partition_name for p in listed if p.lower is not None and p.lower == month_start)
    assert len(older) >= 2
    action = make_action()
    with open_writer(ledger_url) as writer:
        writer.receive(action)
    with connect(ledger_url, Role.WRITER) as conn, conn.transaction():
        found = conn.execute(
            "SELECT appended FROM ledger.record_transition(NULL, %s, %s, %s, %s, NULL, 'pending', NULL, '1',"
            " NULL, NULL, NULL, NULL, NULL, 'first seen on fetch', 'tests', 1, 'fetch', NULL)",
            [action.reservation_sid, action.workspace_sid, action.task_sid, action.worker_sid],
        ).fetchone()
        assert found == (True,)
        probed = dict(
            conn.execute(
                "SELECT t.relname, pg_catalog.pg_stat_get_xact_numscans(i.indexrelid)"  # this transaction's
                "  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class t ON t.oid = i.indrelid"
                "  JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid"
                " WHERE x.relname LIKE '%%chain%%' AND t.relname = ANY(%s)",
                [sorted(older | {current})],
            ).fetchall()
        )
    assert set(probed) == set(older | {current})  # the counters are there to read
    assert probed[current] >= 1  # the chain's own month is read
    assert {name: probed[name] for name in older} == dict.fromkeys(older, 0)
