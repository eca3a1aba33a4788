"""The workers' hot path in the ledger: the per-reservation lock and ``receive``."""

from __future__ import annotations

import threading
import time

import pytest

from tests.ledger.conftest import make_action
from workers.errors import LedgerError, ReservationBusy
from workers.ledger.connector import Connector
from workers.ledger.events import Transition
from workers.ledger.models import Outcome
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter


def test_receive_registers_once_and_reports_outcome_and_projection(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    action = make_action()
    first = writer.receive(action)
    assert (first.created, first.outcome, first.reservation) == (True, None, None)

    writer.append(
        Transition(
            action.reservation_sid,
            from_status="pending",
            to_status="accepted",
            etag_before="1",
            etag_after="2",
            action_id=action.action_id,
            outcome=Outcome.APPLIED,
        )
    )
    again = writer.receive(action)
    assert (again.created, again.outcome) == (False, "applied")
    assert again.reservation is not None
    assert (again.reservation.status, again.reservation.etag) == ("accepted", "2")
    assert [e.kind for e in reader.history(action_id=action.action_id)] == [
        "received",
        "transition",
    ]


def test_the_reservation_lock_serialises_and_lends_its_connection(writer: PostgresLedgerWriter) -> None:
    action = make_action()
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with writer.lock(action.reservation_sid) as locked:
            held.set()
            locked.receive(action)  # writes go through the locked connection
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with writer.lock(action.reservation_sid):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_a_lock_held_too_long_is_reservation_busy(writer: PostgresLedgerWriter) -> None:
    action = make_action()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with writer.lock(action.reservation_sid):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    try:
        with pytest.raises(ReservationBusy), writer.lock(action.reservation_sid, timeout=0.2):
            pass
    finally:
        release.set()
        thread.join()
    with writer.lock(action.reservation_sid, timeout=1):
        pass  # free again, and the pooled connection that timed out is usable


def test_a_statement_timeout_bounds_every_statement_on_the_pools_connections(db_url: str) -> None:
    """Celery enforces no time limit on the threads pool: the ledger's own bound must hold."""
    with Connector(db_url, statement_timeout=0.3, min_size=1, max_size=1) as connector:
        with connector.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("300ms",)
        started = time.monotonic()
        with pytest.raises(LedgerError, match="statement timeout"), connector.connection() as conn:
            conn.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
