"""Ledger order is safe for readers: a row committed late never lands behind a reader's cursor.

Positions are handed out in insert order but become visible in commit order. Here the
transaction holding the smaller position commits last: a reader paging by position alone
would skip it; the ledger's readers only see rows below the oldest transaction in flight.
"""

from __future__ import annotations

from tests.ledger.conftest import superuser
from workers.core.sids import new_sid
from workers.ledger.connector import connect
from workers.ledger.models import Cursor, Role
from workers.ledger.queries import QUERIES
from workers.ledger.store import Ledger


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
    }


def test_a_smaller_position_committed_last_is_not_skipped(fresh_db_url: str, fresh_ledger: Ledger) -> None:
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
        page = fresh_ledger.history(after=cursor)
        assert page == []
        slow.commit()

    page = fresh_ledger.history(after=cursor)
    assert [e.position for e in page] == [small, large]
    assert [e.reservation_sid for e in page] == [first_sid, second_sid]
    cursor = page[-1].cursor
    assert fresh_ledger.history(after=cursor) == []


def test_rows_committed_after_a_read_always_sort_after_its_cursor(
    fresh_db_url: str, fresh_ledger: Ledger
) -> None:
    """Interleave many transactions; a tailing reader must end up having seen every row once."""
    sids = [new_sid("WR") for _ in range(6)]
    seen: list[int] = []
    cursor = Cursor(0, 0)

    def tail() -> None:
        nonlocal cursor
        page = fresh_ledger.history(after=cursor)
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
        fresh_ledger.record_transition(
            sids[5], from_status="pending", to_status="accepted", etag_before="1", etag_after="2"
        )
        tail()
        c.commit()
    tail()
    everything = fresh_ledger.history()
    assert len(everything) == 6
    assert sorted(seen) == sorted(e.position for e in everything)
    assert len(set(seen)) == len(seen)
