"""The writer role appends only through the ledger's functions: five forging attempts, all refused.

Each attempt is made as ``reservations_writer`` (the workers' pool, even over a superuser URL),
then as a superuser with the guards on, where ops/LEDGER.md documents what a superuser can
still do. With the guards switched off, only the digests kept outside catch a superuser
(tests/ledger/test_digests.py).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.ledger.conftest import accept_applied, make_action, seal, superuser
from workers.errors import LedgerError, LedgerPermissionDenied
from workers.ledger.connector import Connector, connect, translated
from workers.ledger.events import Redrive, Settle
from workers.ledger.models import Outcome, Role
from workers.ledger.queries import QUERIES
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import verify
from workers.ledger.writer import PostgresLedgerWriter

pytestmark = pytest.mark.integration

ZERO = "\\x" + "00" * 32


@pytest.fixture(scope="module")
def settled(writer: PostgresLedgerWriter, db_url: str) -> uuid.UUID:
    action = make_action()
    accept_applied(writer, action)
    seal(db_url)
    return action.action_id


def forgeries(action_id: uuid.UUID) -> dict[str, str]:
    return {
        "clear an outcome": "UPDATE ledger.actions SET outcome = NULL, outcome_at = NULL"
        f" WHERE action_id = '{action_id}'",
        "change an outcome": f"UPDATE ledger.actions SET outcome = 'failed' WHERE action_id = '{action_id}'",
        "insert an event": "INSERT INTO ledger.events (kind, reservation_sid, outcome)"
        " VALUES ('outcome', 'WRforged', 'applied')",
        "insert a checkpoint": "INSERT INTO ledger.checkpoints"
        " (checkpoint_id, max_position, chains, prev_digest, digest)"
        f" SELECT max(checkpoint_id) + 1, 0, 0, '{ZERO}', '{ZERO}' FROM ledger.checkpoints",
        "insert a chain head": f"INSERT INTO ledger.chain_heads VALUES ('WRforged', 1, '{ZERO}', 1)",
    }


ATTEMPTS = list(forgeries(uuid.UUID(int=0)))


def _state(url: str) -> tuple[object, ...]:
    with superuser(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM ledger.events), (SELECT count(*) FROM ledger.checkpoints),"
            " (SELECT count(*) FROM ledger.chain_heads),"
            " (SELECT array_agg(outcome ORDER BY action_id) FROM ledger.actions)"
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_the_writer_forges_nothing_0_of_5(db_url: str, settled: uuid.UUID) -> None:
    before = _state(db_url)
    succeeded = []
    connector = Connector(db_url, Role.WRITER, min_size=1, max_size=1)  # a superuser URL, SET ROLE
    with connector:
        for name, statement in forgeries(settled).items():
            try:
                with connector.connection() as conn:
                    conn.execute(statement)
                succeeded.append(name)
            except LedgerPermissionDenied:
                pass
    assert succeeded == []
    assert _state(db_url) == before
    with connect(db_url, Role.READER) as conn:
        assert verify(conn) == []


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_a_superuser_with_the_guards_on(db_url: str, settled: uuid.UUID, attempt: str) -> None:
    """Refused (RL001, RL004 at commit), except an event: it goes through the chain trigger like any
    append, chained and timestamped, so it is an append, not a forgery (documented)."""
    statement = forgeries(settled)[attempt]
    with superuser(db_url) as conn:
        if attempt == "insert an event":
            row = conn.execute(statement + " RETURNING chain_key, chain_seq").fetchone()
            assert row == ("WRforged", 1)
        else:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(statement)
            assert caught.value.sqlstate in {"RL001", "RL004"}
    with connect(db_url, Role.READER) as conn:
        assert verify(conn) == []


def test_an_outcome_is_never_cleared_not_even_by_a_redrive(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader
) -> None:
    action = make_action()
    fresh_writer.receive(action)
    fresh_writer.append(Settle(action.action_id, Outcome.DEAD_LETTERED))
    with superuser(fresh_db_url) as conn, pytest.raises(psycopg.Error, match="only with a redrive row"):
        conn.execute(
            "UPDATE ledger.actions SET redrives = redrives + 1 WHERE action_id = %s", [action.action_id]
        )
    with superuser(fresh_db_url) as conn, pytest.raises(psycopg.Error, match="never changes"):
        conn.execute(
            "UPDATE ledger.actions SET outcome = NULL, outcome_at = NULL WHERE action_id = %s",
            [action.action_id],
        )
    fresh_writer.append(Redrive(action.action_id, detail="operator"))
    record = fresh_reader.action(action.action_id)
    assert record is not None
    assert (record.outcome, record.redrives) == ("dead_lettered", 1)


def test_what_an_action_received_never_changes(fresh_db_url: str, fresh_writer: PostgresLedgerWriter) -> None:
    action = make_action()
    fresh_writer.receive(action)
    with superuser(fresh_db_url) as conn:
        for change in ("producer = 'someone else'", "attempts = -1", "redrives = 5"):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(f"UPDATE ledger.actions SET {change} WHERE action_id = %s", [action.action_id])
            assert caught.value.sqlstate == "RL001"
        with pytest.raises(psycopg.Error, match="append-only"):
            conn.execute("DELETE FROM ledger.actions")


def test_a_checkpoint_whose_heads_are_not_the_chains_is_refused(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter
) -> None:
    action = make_action()
    fresh_writer.receive(action)
    sealed = seal(fresh_db_url)
    with superuser(fresh_db_url) as conn:
        with pytest.raises(psycopg.Error, match="not a row of that chain"):
            conn.execute(
                "INSERT INTO ledger.checkpoint_heads VALUES (%s, %s, 1, %s, 1)",
                [sealed.checkpoint_id, "WRnowhere", b"\x00" * 32],
            )
        with pytest.raises(psycopg.Error, match="does not match its sealed heads"), conn.transaction():
            conn.execute(
                "INSERT INTO ledger.checkpoints (checkpoint_id, max_position, chains, prev_digest, digest)"
                " VALUES (%s, %s, 0, %s, %s)",
                [sealed.checkpoint_id + 1, sealed.max_position, sealed.digest, b"\x01" * 32],
            )
    seal(fresh_db_url)  # the genuine one still seals


def test_an_append_after_another_write_is_refused_even_with_a_forged_setting(db_url: str) -> None:
    """A transaction that got its xid before joining the writers would be invisible to readers'
    horizon, so it may not append (RL003), whatever ``ledger.writing`` says."""
    for prelude in (
        "SELECT pg_current_xact_id()",
        "SET LOCAL ledger.writing = 'on'; SELECT pg_current_xact_id()",
    ):
        with connect(db_url, Role.WRITER) as conn:
            conn.autocommit = False
            for statement in prelude.split("; "):
                conn.execute(statement)
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(QUERIES["record_received"], _received())
            assert caught.value.sqlstate == "RL003"
            conn.rollback()
    with connect(db_url, Role.WRITER) as conn:
        conn.autocommit = False
        conn.execute("SELECT pg_current_xact_id()")
        with pytest.raises(LedgerError, match="must come before"), translated():
            conn.execute(QUERIES["record_received"], _received())


def test_a_joined_mark_from_elsewhere_does_not_spare_the_check(db_url: str) -> None:
    """join_writers trusts ``ledger.joined`` (0006) only when it names this very transaction: a mark
    copied from an earlier transaction, or one left at session level, still meets RL003."""
    with connect(db_url, Role.WRITER) as conn:
        conn.autocommit = False
        conn.execute(QUERIES["record_received"], _received())
        copied = conn.execute("SELECT current_setting('ledger.joined')").fetchone()
        conn.commit()
        assert copied is not None
        assert copied[0]
        for prelude in (
            "SELECT set_config('ledger.joined', %s, true)",
            "SELECT set_config('ledger.joined', %s, false)",
        ):
            conn.execute("SELECT pg_current_xact_id()")
            conn.execute(prelude, [copied[0]])
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(QUERIES["record_received"], _received())
            assert caught.value.sqlstate == "RL003"
            conn.rollback()
        conn.execute("RESET ledger.joined")
        conn.commit()


def test_many_appends_in_one_transaction_join_once(db_url: str) -> None:
    """The events API's batches: every append after the first finds its own transaction's mark."""
    with connect(db_url, Role.WRITER) as conn:
        conn.autocommit = False
        for _ in range(3):
            conn.execute(QUERIES["record_received"], _received())
        mark = conn.execute("SELECT current_setting('ledger.joined')").fetchone()
        own = conn.execute(
            "SELECT pg_backend_pid()::text || ' ' || extract(epoch FROM transaction_timestamp())::text"
        ).fetchone()
        conn.commit()
    assert mark == own


def _received() -> dict[str, object]:
    action = make_action()
    return {
        "action_id": action.action_id,
        "action": "accept",
        "workspace_sid": action.workspace_sid,
        "reservation_sid": action.reservation_sid,
        "task_sid": None,
        "worker_sid": None,
        "params": None,
        "expected_status": None,
        "not_after": None,
        "correlation_id": None,
        "producer": None,
        "worker_host": "test",
        "worker_pid": 1,
        "trace_id": None,
    }
