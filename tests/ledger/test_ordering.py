"""Ledger order is safe for readers: a row committed late never lands behind a reader's cursor.

Positions are handed out in insert order but become visible in commit order. Here the
transaction holding the smaller position commits last: a reader paging by position alone
would skip it; the ledger's readers only see rows below the oldest ledger writer in flight
(ledger.visible_horizon), and transactions that never append do not hold them back.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

from tests.ledger.conftest import make_action, superuser
from tests.support.services import scratch_name
from workers.core.sids import new_sid
from workers.ledger.connector import connect, drop_database, ensure_database, with_database
from workers.ledger.events import Settle, Transition
from workers.ledger.models import Cursor, Outcome, Role
from workers.ledger.queries import QUERIES
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter


def _transition(sid: str) -> dict[str, object]:
    return {
        "action_id": None,
        "reservation_sid": sid,
        "workspace_sid": None,
        "task_sid": None,
        "worker_sid": None,
        "from_status": "pending",
        "to_status": "accepted",
        "etag_before": "1",
        "etag_after": "2",
        "attempt": None,
        "http_status": None,
        "twilio_request_id": None,
        "duration_ms": None,
        "outcome": None,
        "detail": None,
        "worker_host": "test",
        "worker_pid": 1,
        "source": None,
        "trace_id": None,
    }


def test_a_smaller_position_committed_last_is_not_skipped(
    fresh_db_url: str, fresh_reader: LedgerReader
) -> None:
    first_sid, second_sid = new_sid("WR"), new_sid("WR")
    cursor = Cursor(0, 0)
    with connect(fresh_db_url, Role.WRITER) as slow, connect(fresh_db_url, Role.WRITER) as fast:
        slow.autocommit = fast.autocommit = False
        row = slow.execute(QUERIES["record_transition"], _transition(first_sid)).fetchone()
        assert row is not None
        small = row[0]
        row = fast.execute(QUERIES["record_transition"], _transition(second_sid)).fetchone()
        assert row is not None
        large = row[0]
        assert small < large
        fast.commit()

        # Paging by position alone, a reader would now see `large` and move past `small` for good.
        with superuser(fresh_db_url) as naive:
            visible = [r[0] for r in naive.execute("SELECT position FROM ledger.events ORDER BY position")]
        assert visible == [large]

        # The ledger's reader sees nothing yet: `slow` is still in flight and older.
        page = fresh_reader.history(after=cursor)
        assert page == []
        slow.commit()

    page = fresh_reader.history(after=cursor)
    assert [e.position for e in page] == [small, large]
    assert [e.reservation_sid for e in page] == [first_sid, second_sid]
    cursor = page[-1].cursor
    assert fresh_reader.history(after=cursor) == []


def test_rows_committed_after_a_read_always_sort_after_its_cursor(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader
) -> None:
    """Interleave many transactions; a tailing reader must end up having seen every row once."""
    sids = [new_sid("WR") for _ in range(6)]
    seen: list[int] = []
    cursor = Cursor(0, 0)

    def tail() -> None:
        nonlocal cursor
        page = fresh_reader.history(after=cursor)
        if page:
            seen.extend(e.position for e in page)
            cursor = page[-1].cursor

    with (
        connect(fresh_db_url, Role.WRITER) as a,
        connect(fresh_db_url, Role.WRITER) as b,
        connect(fresh_db_url, Role.WRITER) as c,
    ):
        for conn in (a, b, c):
            conn.autocommit = False
        a.execute(QUERIES["record_transition"], _transition(sids[0]))
        b.execute(QUERIES["record_transition"], _transition(sids[1]))
        c.execute(QUERIES["record_transition"], _transition(sids[2]))
        c.commit()
        tail()
        a.execute(QUERIES["record_transition"], _transition(sids[3]))
        b.commit()
        tail()
        c.execute(QUERIES["record_transition"], _transition(sids[4]))
        a.commit()
        tail()
        fresh_writer.append(
            Transition(sids[5], from_status="pending", to_status="accepted", etag_before="1", etag_after="2")
        )
        tail()
        c.commit()
    tail()
    everything = fresh_reader.history()
    assert len(everything) == 6
    assert sorted(seen) == sorted(e.position for e in everything)
    assert len(set(seen)) == len(seen)


def _foreign_xid(url: str) -> psycopg.Connection[Any]:
    """A connection idle in a transaction that holds an xid (and never touches the ledger)."""
    conn = psycopg.connect(url)
    conn.execute("SELECT pg_current_xact_id()")
    return conn


def test_transactions_that_never_append_do_not_hold_readers_back(
    admin_url: str, fresh_db_url: str, fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader
) -> None:
    """An idle transaction holding an xid in another database of the cluster, and one in the
    ledger's own database that never appends: a new outcome is visible at once (under 1 s)."""
    other = with_database(admin_url, scratch_name("foreign"))
    ensure_database(other)
    try:
        with _foreign_xid(other) as elsewhere, _foreign_xid(fresh_db_url) as here:
            action = make_action()
            fresh_writer.receive(action)
            started = time.monotonic()
            fresh_writer.append(Settle(action.action_id, Outcome.FAILED))
            while not fresh_reader.history(action_id=action.action_id, kind="outcome"):
                assert time.monotonic() - started < 1.0, "the outcome is still not visible after 1 s"
                time.sleep(0.005)
            delay = time.monotonic() - started
            for conn in (elsewhere, here):  # both still in flight, holding their xids
                row = conn.execute("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").fetchone()
                assert row == (True,)
        assert delay < 1.0
    finally:
        drop_database(other)


def test_concurrent_writers_committing_out_of_order_are_never_skipped(
    fresh_db_url: str, fresh_reader: LedgerReader
) -> None:
    """Writers hold their transactions open for random times while a reader tails by cursor."""
    writers, per_writer = 4, 15
    done = threading.Event()
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with connect(fresh_db_url, Role.WRITER) as conn:
                conn.autocommit = False
                for _ in range(per_writer):
                    conn.execute(QUERIES["record_transition"], _transition(new_sid("WR")))
                    time.sleep(rng.uniform(0, 0.02))
                    conn.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[int] = []
    cursor = Cursor(0, 0)

    def tail() -> None:
        nonlocal cursor
        while page := fresh_reader.history(after=cursor, limit=7):
            seen.extend(e.position for e in page)
            cursor = page[-1].cursor

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        tail()
    for thread in threads:
        thread.join()
    done.set()
    tail()
    assert errors == []
    assert len(seen) == writers * per_writer
    assert sorted(seen) == sorted(set(seen))
    assert sorted(seen) == [e.position for e in sorted(fresh_reader.history(), key=lambda e: e.position)]


def test_a_repeatable_read_reader_is_never_ahead(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter
) -> None:
    """In one REPEATABLE READ transaction the horizon stays conservative: a writer in flight at
    its snapshot holds back everything after it, even once it has committed."""
    first, second = new_sid("WR"), new_sid("WR")
    with connect(fresh_db_url, Role.WRITER) as slow, connect(fresh_db_url, Role.READER) as reader:
        slow.autocommit = False
        slow.execute(QUERIES["record_transition"], _transition(first))
        reader.autocommit = False
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        query = (
            "SELECT count(*) FROM ledger.events e"
            " WHERE e.tx_id < (SELECT ledger.visible_horizon(pg_current_snapshot()))"
        )
        assert reader.execute(query).fetchone() == (0,)
        fresh_writer.append(
            Transition(second, from_status="pending", to_status="accepted", etag_before="1", etag_after="2")
        )
        slow.commit()
        assert reader.execute(query).fetchone() == (0,)
        reader.rollback()
        assert reader.execute(query).fetchone() == (2,)
