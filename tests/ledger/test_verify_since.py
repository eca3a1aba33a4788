"""Incremental verification: ``ledger verify --since-checkpoint N`` checks what was written after
checkpoint N, each chain from its sealed head, and finds what the full verify finds there."""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner, Result

from tests.ledger.conftest import accept_applied, make_action, seal, superuser
from tests.ledger.test_verify import _fill, _tamper
from workers.cli import main
from workers.core.sids import new_sid
from workers.errors import VerificationError
from workers.ledger.connector import connect
from workers.ledger.models import LedgerRow, Problem, Role
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
        found = slow.execute(
            "SELECT position FROM ledger.events WHERE reservation_sid = %s", [slow_sid]
        ).fetchone()
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
