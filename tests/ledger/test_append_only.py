"""The database itself keeps the ledger append-only, and the application's role cannot change that."""

from __future__ import annotations

import psycopg
import pytest

from tests.ledger.conftest import accept_applied, make_action, open_reader, open_writer, superuser
from workers.errors import AppendOnlyViolation, LedgerPermissionDenied
from workers.ledger.connector import Connector, connect
from workers.ledger.models import Role
from workers.ledger.verify import seal_checkpoint, verify
from workers.ledger.writer import PostgresLedgerWriter

CHANGES = {
    "UPDATE": "UPDATE ledger.events SET detail = 'changed'",
    "DELETE": "DELETE FROM ledger.events",
    "TRUNCATE": "TRUNCATE ledger.events",
    "UPDATE no row": "UPDATE ledger.events SET detail = 'x' WHERE false",
}


@pytest.fixture(scope="module", autouse=True)
def some_rows(writer: PostgresLedgerWriter) -> None:
    action = make_action()
    accept_applied(writer, action)


@pytest.mark.parametrize("statement", list(CHANGES.values()), ids=list(CHANGES))
def test_even_a_superuser_cannot_change_ledger_rows(db_url: str, statement: str) -> None:
    with superuser(db_url) as conn:
        before = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
    with superuser(db_url) as conn, pytest.raises(psycopg.Error, match="append-only") as caught:
        conn.execute(statement)
    assert caught.value.sqlstate == "RL001"
    with superuser(db_url) as conn:
        after = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
    assert before is not None
    assert before[0] >= 2
    assert after == before


@pytest.mark.parametrize("statement", list(CHANGES.values())[:3], ids=list(CHANGES)[:3])
def test_the_owner_is_refused_with_the_projects_error(db_url: str, statement: str) -> None:
    with pytest.raises(AppendOnlyViolation, match="append-only"), connect(db_url, Role.OWNER) as conn:
        conn.execute(statement)


@pytest.mark.parametrize(
    "table", ["ledger.checkpoints", "ledger.checkpoint_heads"], ids=["checkpoints", "checkpoint_heads"]
)
def test_checkpoints_are_append_only_too(db_url: str, table: str) -> None:
    with connect(db_url, Role.WRITER) as conn:
        seal_checkpoint(conn)
    with superuser(db_url) as conn:
        for statement in (f"DELETE FROM {table}", f"TRUNCATE {table} CASCADE"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.events SET detail = 'x'",
        "DELETE FROM ledger.events",
        "TRUNCATE ledger.events",
        "ALTER TABLE ledger.events DISABLE TRIGGER events_append_only",
        "ALTER TABLE ledger.events DISABLE TRIGGER USER",
        "DROP TRIGGER events_append_only ON ledger.events",
        "SET session_replication_role = replica",
        "UPDATE ledger.chain_heads SET chain_seq = 0",
        "INSERT INTO ledger.chain_heads VALUES ('x', 1, '\\x00', 1)",
        "CREATE OR REPLACE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE sql AS 'SELECT NULL'",
    ],
)
def test_the_writer_pool_cannot_change_or_unguard_the_ledger_even_with_a_superuser_url(
    db_url: str, statement: str
) -> None:
    connector = Connector(db_url, Role.WRITER, min_size=1, max_size=1)
    with connector:
        with connector.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("reservations_writer",)
        with pytest.raises(LedgerPermissionDenied), connector.connection() as conn:
            conn.execute(statement)


def test_the_reader_only_reads(db_url: str) -> None:
    with open_reader(db_url) as reader, open_writer(db_url, role=Role.READER) as refused:
        assert reader.history(limit=1)
        with pytest.raises(LedgerPermissionDenied):
            refused.receive(make_action())


def test_no_one_can_forge_chain_fields(db_url: str) -> None:
    """The writer may not insert at all (tests/ledger/test_forging.py); the owner may, but the chain
    trigger sets the chain's fields whatever it sends."""
    with connect(db_url, Role.OWNER) as conn:
        row = conn.execute(
            "INSERT INTO ledger.events (position, tx_id, chain_key, chain_seq, prev_hash,"
            " row_hash, kind, reservation_sid) VALUES (-1, '1', 'forged', 99, '\\x01', '\\x02',"
            " 'transition', 'WRforged') RETURNING position, chain_key, chain_seq, row_hash"
        ).fetchone()
        assert row is not None
        assert row[0] > 0
        assert row[1] == "WRforged"
        assert row[2] == 1
        assert row[3] != b"\x02"
        assert verify(conn) == []


def test_no_one_can_forge_the_time_of_a_row(db_url: str) -> None:
    """recorded_at routes a row to its partition before the chain trigger runs, so the trigger
    refuses a time the database clock did not give rather than overwrite it."""
    with pytest.raises(AppendOnlyViolation, match="recorded_at"), connect(db_url, Role.OWNER) as conn:
        conn.execute(
            "INSERT INTO ledger.events (recorded_at, kind, reservation_sid)"
            " VALUES ('2000-01-01', 'transition', 'WRforged')"
        )
