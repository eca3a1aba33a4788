"""Incremental verification: ``ledger verify --since-checkpoint N`` checks what was written after
checkpoint N, each chain from its sealed head, and finds what the full verify finds there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from tests.ledger.conftest import accept_applied, make_action, seal, superuser
from tests.ledger.test_verify import _fill, _tamper
from workers.cli import main
from workers.core.sids import new_sid
from workers.errors import VerificationError
from workers.ledger.connector import connect
from workers.ledger.models import LedgerRow, Problem, Role
from workers.ledger.queries import QUERIES
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import verify, verify_since
from workers.ledger.writer import PostgresLedgerWriter

RECEIVE = (
    "SELECT ledger.record_received(%s, 'accept', %s, %s, NULL, NULL, NULL, NULL, NULL, NULL, 'tests',"
    " NULL, NULL, NULL)"
)


def _since(url: str, checkpoint_id: int) -> tuple[list[Problem], int]:
    with connect(url, Role.READER) as conn:
        return verify_since(conn, checkpoint_id)


def _cli(url: str, checkpoint_id: int) -> Result:
    return CliRunner().invoke(
        main, ["ledger", "verify", "--since-checkpoint", str(checkpoint_id), "--database-url", url]
    )


def _after(rows: list[LedgerRow], position: int) -> list[LedgerRow]:
    return [r for r in rows if r.position > position]


def test_only_the_rows_after_the_checkpoint_are_checked(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    before = _fill(fresh_writer, fresh_reader, 3)
    sealed = seal(fresh_db_url)
    # Two of the sealed chains go on, and a new one starts.
    for row in before[:2]:
        fresh_writer.receive(make_action(reservation_sid=row.reservation_sid))
    accept_applied(fresh_writer)
    rows = fresh_reader.history()
    new = _after(rows, sealed.max_position)
    assert len({r.chain_key for r in new}) >= 2
    assert _since(fresh_db_url, sealed.checkpoint_id) == ([], len(new))
    result = _cli(fresh_db_url, sealed.checkpoint_id)
    assert result.exit_code == 0, result.output
    assert f"{len(new)} row(s) written after it checked" in result.output
    # Nothing new: nothing to check, and that is no problem.
    later = seal(fresh_db_url)
    assert _since(fresh_db_url, later.checkpoint_id) == ([], 0)


def test_an_altered_new_row_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 2)
    sealed = seal(fresh_db_url)
    victim = _after(_fill(fresh_writer, fresh_reader, 1), sealed.max_position)[1]
    _tamper(fresh_db_url, "UPDATE ledger.events SET http_status = 599 WHERE position = %s", victim.position)
    problems, _ = _since(fresh_db_url, sealed.checkpoint_id)
    assert [(p.kind, p.position) for p in problems] == [("altered", victim.position)]
    result = _cli(fresh_db_url, sealed.checkpoint_id)
    assert result.exit_code == 1
    assert f"altered at position {victim.position}" in result.output


def test_the_first_new_row_must_follow_the_sealed_head(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    """The row right after a sealed head removed: the next one is missing a predecessor, counted
    from the sealed head (the full verify finds the same)."""
    old = _fill(fresh_writer, fresh_reader, 1)
    sealed = seal(fresh_db_url)
    fresh_writer.receive(make_action(reservation_sid=old[0].reservation_sid))
    fresh_writer.receive(make_action(reservation_sid=old[0].reservation_sid))
    first, second = _after(fresh_reader.history(), sealed.max_position)
    _tamper(fresh_db_url, "DELETE FROM ledger.events WHERE position = %s", first.position)
    problems, checked = _since(fresh_db_url, sealed.checkpoint_id)
    assert [(p.kind, p.position) for p in problems] == [("removed", second.position)]
    assert checked == 1
    with connect(fresh_db_url, Role.READER) as conn:
        assert [(p.kind, p.position) for p in verify(conn)] == [("removed", second.position)]


def test_a_new_row_that_does_not_link_to_the_sealed_head_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    old = _fill(fresh_writer, fresh_reader, 1)
    sealed = seal(fresh_db_url)
    fresh_writer.receive(make_action(reservation_sid=old[0].reservation_sid))
    (first,) = _after(fresh_reader.history(), sealed.max_position)
    # Relinked to another chain's sealed head, its hash recomputed: only the sealed head betrays it.
    _tamper(
        fresh_db_url,
        "UPDATE ledger.events e SET prev_hash = decode(repeat('11', 32), 'hex') WHERE position = %s;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = %s",
        first.position,
        first.position,
    )
    problems, _ = _since(fresh_db_url, sealed.checkpoint_id)
    assert ("broken_link", first.position) in [(p.kind, p.position) for p in problems]


def test_a_row_inserted_after_the_checkpoint_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 1)
    sealed = seal(fresh_db_url)
    _tamper(
        fresh_db_url,
        "INSERT INTO ledger.events (position, tx_id, recorded_at, chain_key, chain_seq, prev_hash, row_hash,"
        " kind, reservation_sid) VALUES (3000, pg_current_xact_id(), now(), 'WRnew', 1, '\\x', '\\x',"
        " 'transition', 'WRnew');"
        " UPDATE ledger.events e SET prev_hash = decode(repeat('00', 32), 'hex') WHERE position = 3000;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = 3000",
    )
    problems, _ = _since(fresh_db_url, sealed.checkpoint_id)
    assert [(p.kind, p.position) for p in problems] == [("inserted", 3000)]


def test_a_row_in_flight_while_the_checkpoint_was_sealed_is_checked(fresh_db_url: str) -> None:
    """A writer that appended before the seal but committed after it: its row has a smaller
    position than rows the seal saw, and is still checked (the checkpoint's horizon, not its top
    position, says where the new rows start)."""
    slow_sid, quick_sid = new_sid("WR"), new_sid("WR")
    with superuser(fresh_db_url) as slow, superuser(fresh_db_url) as quick:
        slow.execute("SET ROLE reservations_writer")
        quick.execute("SET ROLE reservations_writer")
        with slow.transaction():
            slow.execute(RECEIVE, [uuid.uuid4(), new_sid("WS"), slow_sid])
            quick.execute(RECEIVE, [uuid.uuid4(), new_sid("WS"), quick_sid])
            sealed = seal(fresh_db_url)
        found = slow.execute("SELECT position FROM ledger.events WHERE chain_key = %s", [slow_sid]).fetchone()
    assert found is not None
    assert found[0] < sealed.max_position
    _tamper(fresh_db_url, "UPDATE ledger.events SET producer = 'forged' WHERE position = %s", found[0])
    problems, checked = _since(fresh_db_url, sealed.checkpoint_id)
    assert [(p.kind, p.position) for p in problems] == [("altered", found[0])]
    assert checked == 1


def test_a_tampered_checkpoint_after_the_start_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 1)
    first = seal(fresh_db_url)
    _fill(fresh_writer, fresh_reader, 1)
    second = seal(fresh_db_url)
    _tamper(
        fresh_db_url,
        "UPDATE ledger.checkpoints SET max_position = max_position + 1 WHERE checkpoint_id = %s",
        second.checkpoint_id,
    )
    problems, _ = _since(fresh_db_url, first.checkpoint_id)
    assert [p.kind for p in problems] == ["checkpoint"]


@pytest.mark.parametrize("unknown", [True, False])
def test_a_checkpoint_it_cannot_start_from_is_refused(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str, unknown: bool
) -> None:
    _fill(fresh_writer, fresh_reader, 1)
    sealed = seal(fresh_db_url)
    if not unknown:  # as a checkpoint sealed before migration 0005 is
        _tamper(fresh_db_url, "UPDATE ledger.checkpoints SET horizon = NULL")
    asked = sealed.checkpoint_id + 1 if unknown else sealed.checkpoint_id
    with pytest.raises(VerificationError, match="no checkpoint" if unknown else "before migration 0005"):
        _since(fresh_db_url, asked)
    result = _cli(fresh_db_url, asked)
    assert result.exit_code == 2


def test_a_moved_chain_that_ends_short_of_its_head_or_off_it_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    """The heads of the chains that moved: one whose last new row was cut ends short of its head;
    one whose last row was rewritten with its hash recomputed does not end on its head."""
    old = _fill(fresh_writer, fresh_reader, 2)
    sealed = seal(fresh_db_url)
    cut_sid, rewritten_sid = old[0].reservation_sid, old[-1].reservation_sid
    for sid in (cut_sid, cut_sid, rewritten_sid):
        fresh_writer.receive(make_action(reservation_sid=sid))
    new = _after(fresh_reader.history(), sealed.max_position)
    cut = [r for r in new if r.reservation_sid == cut_sid][-1]
    rewritten = [r for r in new if r.reservation_sid == rewritten_sid][-1]
    _tamper(fresh_db_url, "DELETE FROM ledger.events WHERE position = %s", cut.position)
    _tamper(
        fresh_db_url,
        "UPDATE ledger.events SET producer = 'forged' WHERE position = %s;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = %s",
        rewritten.position,
        rewritten.position,
    )
    problems, _ = _since(fresh_db_url, sealed.checkpoint_id)
    assert sorted((p.kind, p.position) for p in problems) == sorted(
        [("removed", cut.position), ("altered", rewritten.position)]
    )
    with connect(fresh_db_url, Role.READER) as conn:
        assert sorted((p.kind, p.position) for p in verify(conn)) == sorted(
            (p.kind, p.position) for p in problems
        )


def _plan(url: str, query: str, params: dict[str, object], *settings: str) -> dict[str, Any]:
    with connect(url, Role.READER) as conn, conn.transaction():
        for setting in settings:
            conn.execute(setting)
        found = conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {}").format(sql.SQL(QUERIES[query])),
            params,
        ).fetchone()
    assert found is not None
    plan: dict[str, Any] = found[0][0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _since_params(url: str, checkpoint_id: int) -> dict[str, object]:
    with connect(url, Role.READER) as conn:
        found = conn.execute(QUERIES["checkpoint_horizon"], {"checkpoint_id": checkpoint_id}).fetchone()
    assert found is not None
    return {"checkpoint_id": checkpoint_id, "horizon": found[2]}


def test_a_moved_chain_that_ends_on_its_head_is_not_looked_up_in_the_whole_ledger(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    """verify_heads_since: a chain whose head is one of the new rows ends on it; only the others
    are read through the chain index of every partition (13,000 look-ups of seven partitions each
    at 10 M rows, 0.8 s of the incremental verify before)."""
    old = _fill(fresh_writer, fresh_reader, 3)
    sealed = seal(fresh_db_url)
    for row in old[:2]:
        fresh_writer.receive(make_action(reservation_sid=row.reservation_sid))
    accept_applied(fresh_writer)
    plan = _plan(fresh_db_url, "verify_heads_since", _since_params(fresh_db_url, sealed.checkpoint_id))
    chain_reads = [n for n in _nodes(plan) if "key64_chain_seq" in n.get("Index Name", "")]
    assert chain_reads, plan
    assert all(n["Actual Loops"] == 0 for n in chain_reads), plan


def test_the_new_rows_are_hashed_where_parallel_workers_can_share_the_work(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    """verify_rows_since hashes the new rows in a subquery of its own, which PostgreSQL may hand to
    parallel workers (hashing is most of an incremental verify: 0.85 s of 2.6 s at 10 M rows).
    Parallel plans are made cheap here so that the few rows of a test qualify; the hash must be
    computed below the Gather, by the workers."""
    _fill(fresh_writer, fresh_reader, 1)
    sealed = seal(fresh_db_url)
    _fill(fresh_writer, fresh_reader, 2)
    plan = _plan(
        fresh_db_url,
        "verify_rows_since",
        _since_params(fresh_db_url, sealed.checkpoint_id),
        "SET LOCAL parallel_setup_cost = 0",
        "SET LOCAL parallel_tuple_cost = 0",
        "SET LOCAL min_parallel_table_scan_size = 0",
        "SET LOCAL min_parallel_index_scan_size = 0",
    )
    gathers = [n for n in _nodes(plan) if n["Node Type"] == "Gather"]
    below_gather = [m for n in gathers for c in n["Plans"] for m in _nodes(c)]
    assert any("event_hash" in " ".join(n.get("Output", [])) for n in below_gather), plan
