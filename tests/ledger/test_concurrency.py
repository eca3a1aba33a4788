"""Concurrent writers, threads and processes, on the same and on different reservations.

Without the workers' per-reservation lock: the ledger must serialise each chain by itself,
keep every chain valid, and lose no row.
"""

from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.ledger.conftest import make_action, open_reader, open_writer
from workers.core.sids import new_sid
from workers.ledger import projection
from workers.ledger.connector import connect
from workers.ledger.events import Attempt, Settle, Transition
from workers.ledger.models import Outcome, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import verify
from workers.ledger.writer import PostgresLedgerWriter

PER_WRITER = 25


def _write(writer: PostgresLedgerWriter, reservation_sid: str, count: int) -> None:
    """``count`` actions on one reservation, three rows each: received, attempt, and the
    transition that carries its outcome."""
    for n in range(count):
        action = make_action(reservation_sid=reservation_sid)
        writer.receive(action)
        writer.append(Attempt(action.action_id, attempt=1, http_status=200))
        writer.append(
            Transition(
                reservation_sid,
                action_id=action.action_id,
                from_status="pending",
                to_status="accepted",
                etag_before=str(n),
                etag_after=str(n + 1),
                outcome=Outcome.APPLIED,
            )
        )


def _process_writer(url: str, reservation_sid: str, count: int) -> None:
    with open_writer(url, max_size=1) as writer:
        _write(writer, reservation_sid, count)


def _check(url: str, reader: LedgerReader, expected_rows: int, sids: set[str]) -> None:
    rows = []
    for sid in sids:
        chain = reader.history(reservation_sid=sid, limit=100_000)
        assert [e.chain_seq for e in chain] == list(range(1, len(chain) + 1))
        assert chain == sorted(chain, key=lambda e: e.chain_seq)  # ledger order agrees with chain order
        rows.extend(chain)
    assert len(rows) == expected_rows
    with connect(url, Role.READER) as conn:
        assert verify(conn) == []
        assert projection.rebuild(conn) == projection.current(conn)


@pytest.mark.parametrize("same_reservation", [True, False], ids=["same", "different"])
def test_threads(fresh_db_url: str, same_reservation: bool) -> None:
    writers = 8
    sids = [new_sid("WR")] * writers if same_reservation else [new_sid("WR") for _ in range(writers)]
    with open_writer(fresh_db_url, max_size=writers) as writer, open_reader(fresh_db_url) as reader:
        with ThreadPoolExecutor(writers) as pool:
            for future in [pool.submit(_write, writer, sid, PER_WRITER) for sid in sids]:
                future.result()
        _check(fresh_db_url, reader, writers * PER_WRITER * 3, set(sids))


@pytest.mark.slow
@pytest.mark.parametrize("same_reservation", [True, False], ids=["same", "different"])
def test_processes(fresh_db_url: str, same_reservation: bool) -> None:
    writers = 4
    sids = [new_sid("WR")] * writers if same_reservation else [new_sid("WR") for _ in range(writers)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_writer, args=(fresh_db_url, sid, PER_WRITER)) for sid in sids]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    with open_reader(fresh_db_url) as reader:
        _check(fresh_db_url, reader, writers * PER_WRITER * 3, set(sids))


def test_one_action_raced_by_many_workers_settles_once(fresh_db_url: str) -> None:
    with open_writer(fresh_db_url, max_size=8) as writer, open_reader(fresh_db_url) as reader:
        action = make_action()
        writer.receive(action)

        def settle(n: int) -> str | None:
            outcome = Outcome.APPLIED if n % 2 else Outcome.DEAD_LETTERED
            return writer.append(Settle(action.action_id, outcome)).outcome

        with ThreadPoolExecutor(8) as pool:
            outcomes = set(pool.map(settle, range(16)))
        assert len(outcomes) == 1
        settled = [e for e in reader.history(action_id=action.action_id) if e.kind == "outcome"]
        assert len(settled) == 1
        assert uuid.UUID(str(settled[0].action_id)) == action.action_id
