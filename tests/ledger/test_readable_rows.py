"""Migration 0014: ledger.rows, every ledger row as the application reads it, for SQL written by
hand. Since 0012 ledger.events leaves an action's facts to its registry entry and a row's
reservation SID to its chain key; the view fills them in exactly as the readers' row_columns
(queries.sql) does, and the tests below tie the two."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.ledger.conftest import accept_applied, append_attempt_as_before_0012, make_action, superuser
from workers.core.sids import new_sid
from workers.errors import LedgerError
from workers.ledger.connector import connect
from workers.ledger.events import RejectedInput, Settle, Transition
from workers.ledger.models import LedgerRow, Outcome, Role, Source
from workers.ledger.queries import QUERIES
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter

FACTS = ("action", "workspace_sid", "task_sid", "correlation_id", "producer")
# The rows as the application reads them: row_columns over the same join as the view.
AS_THE_APPLICATION_READS = (
    "SELECT " + QUERIES["row_columns"] + " FROM ledger.events e"
    " LEFT JOIN ledger.actions a ON a.action_id = e.action_id"
)


def test_a_row_written_since_0012_is_found_by_task_and_reservation_through_the_view(
    writer: PostgresLedgerWriter, db_url: str
) -> None:
    action = accept_applied(writer, with_attempt=True)
    with superuser(db_url) as conn:
        by_task = conn.execute(
            "SELECT kind FROM ledger.events WHERE task_sid = %s", [action.task_sid]
        ).fetchall()
        by_reservation = conn.execute(
            "SELECT kind FROM ledger.events WHERE reservation_sid = %s", [action.reservation_sid]
        ).fetchall()
    # What hand SQL against the table finds since 0012: the received row by task, nothing by SID.
    assert (by_task, by_reservation) == ([("received",)], [])
    with connect(db_url, Role.READER) as conn:
        registry = conn.execute(
            "SELECT action, workspace_sid, task_sid, correlation_id, producer FROM ledger.actions"
            " WHERE action_id = %s",
            [action.action_id],
        ).fetchone()
        assert registry == ("accept", action.workspace_sid, action.task_sid, action.correlation_id, "tests")
        for column, value in (("task_sid", action.task_sid), ("reservation_sid", action.reservation_sid)):
            rows = conn.execute(
                sql.SQL(
                    "SELECT kind, reservation_sid, action, workspace_sid, task_sid, correlation_id, producer"
                    " FROM ledger.rows WHERE {} = %s ORDER BY tx_id, position"
                ).format(sql.Identifier(column)),
                [value],
            ).fetchall()
            assert [row[0] for row in rows] == ["received", "attempt", "transition"], column
            assert {row[1:] for row in rows} == {(action.reservation_sid, *registry)}, column


def _mixed_ledger(writer: PostgresLedgerWriter, db_url: str) -> None:
    """Rows of every shape a reader meets: written since 0012 and before it, rejected inputs
    (with and without a registered action id and a reservation), transitions of no action and
    one that stores a task other than its action's."""
    accept_applied(writer, with_attempt=True)
    old = make_action()
    writer.receive(old)
    append_attempt_as_before_0012(db_url, old.action_id)
    writer.append(Settle(old.action_id, Outcome.FAILED, http_status=404))
    writer.append(
        RejectedInput(
            {
                "action_id": str(old.action_id),
                "action": "accept",
                "reservation_sid": old.reservation_sid,
                "correlation_id": "other",
            },
            "broke the schema",
        )
    )
    writer.append(RejectedInput({"action": "accept", "reservation_sid": "not a sid"}, "broke the schema"))
    # TaskRouter reported a task other than the action's: its transition stores it (0012).
    moved = accept_applied(writer, with_attempt=True, task_sid=new_sid("WT"))
    writer.append(
        Transition(
            moved.reservation_sid,
            "accepted",
            "completed",
            "2",
            "3",
            task_sid=moved.task_sid,
            source=Source.EVENT,
        )
    )
    with superuser(db_url) as conn:
        # A rejected input whose reservation SID was the chain's name itself (kept as given).
        conn.execute(
            "INSERT INTO ledger.events (kind, reservation_sid, detail)"
            " VALUES ('rejected_input', 'rejected_input', 'broke the schema')"
        )
        # A row written before 0012 (triggers off): it stores its reservation SID as well.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO ledger.events (position, tx_id, chain_key, chain_seq, prev_hash, row_hash, kind,"
            " reservation_sid, to_status) VALUES (nextval('ledger.events_position_seq'), '3', 'WRold', 1,"
            " '\\x', '\\x', 'transition', 'WRold', 'pending')"
        )


def _read(db_url: str, query: str) -> tuple[list[str], list[dict[str, Any]]]:
    with connect(db_url, Role.READER) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.encode())
        names = [column.name for column in cur.description or ()]
        return names, cur.fetchall()


def test_the_view_reads_every_row_as_the_application_does(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    """Column for column and row for row: the view, row_columns and history, on rows written
    before 0012 and since, with the columns of ledger.events in their order."""
    _mixed_ledger(fresh_writer, fresh_db_url)
    names, rows = _read(fresh_db_url, "SELECT * FROM ledger.rows ORDER BY position")
    app_names, app_rows = _read(fresh_db_url, AS_THE_APPLICATION_READS + " ORDER BY e.position")
    with superuser(fresh_db_url) as conn:
        table = [
            name
            for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'ledger.events'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        shapes = conn.execute(
            "SELECT count(*) FILTER (WHERE action IS NULL), count(*) FILTER (WHERE action IS NOT NULL)"
            " FROM ledger.events WHERE action_id IS NOT NULL AND kind NOT IN ('received', 'rejected_input')"
        ).fetchone()
    assert shapes is not None
    assert all(shapes), shapes  # rows that leave the facts to the registry, and rows that repeat them
    assert names == app_names == table == [field.name for field in dataclasses.fields(LedgerRow)]
    assert rows == app_rows
    in_ledger_order = sorted(rows, key=lambda row: (int(row["tx_id"]), row["position"]))
    assert fresh_reader.history(limit=len(rows)) == [LedgerRow(**row) for row in in_ledger_order]
    # A reservation SID from the chain key, stored (before 0012), none, and the chain's name kept.
    sids = {row["reservation_sid"] for row in rows}
    assert {None, "rejected_input", "WRold"} <= sids, sids


def test_the_view_is_row_columns_as_postgresql_reads_them(db_url: str) -> None:
    """The migration's text and queries.sql's row_columns are one definition: PostgreSQL parses
    both to the same view (a change to row_columns needs a migration that replaces ledger.rows)."""
    with superuser(db_url) as conn, conn.transaction():
        conn.execute(("CREATE TEMP VIEW row_columns AS " + AS_THE_APPLICATION_READS).encode())
        found = conn.execute(
            "SELECT pg_get_viewdef('ledger.rows'::regclass, true),"
            " pg_get_viewdef('pg_temp.row_columns'::regclass, true)"
        ).fetchone()
    assert found is not None
    assert found[0] == found[1]


@pytest.mark.parametrize("role", [Role.READER, Role.WRITER])
def test_the_reader_and_the_writer_may_select_the_view_and_nothing_else(db_url: str, role: Role) -> None:
    with connect(db_url, role) as conn:
        assert conn.execute("SELECT count(*) >= 0 FROM ledger.rows").fetchone() == (True,)
        granted = conn.execute(
            "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'TRIGGER']) AS p"
            " WHERE has_table_privilege(%s, 'ledger.rows', p)",
            [role.value],
        ).fetchall()
    assert granted == [("SELECT",)]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        ("INSERT INTO ledger.rows (kind) VALUES ('received')", "cannot insert into view"),
        ("UPDATE ledger.rows SET detail = 'changed'", "cannot update view"),
        ("DELETE FROM ledger.rows", "cannot delete from view"),
    ],
)
def test_nobody_writes_through_the_view(db_url: str, role: Role, statement: str, refusal: str) -> None:
    """A view over a join is not automatically updatable, for the owner too (and nobody else is
    granted to write it: above)."""
    with pytest.raises(LedgerError, match=refusal), connect(db_url, role) as conn:
        conn.execute(statement.encode())


def test_the_view_reads_as_its_caller_and_hides_no_row(db_url: str) -> None:
    """security_invoker: a role that may select the view but not the tables under it reads
    nothing through the owner's rights. Not a security barrier: it hides no row to guard."""
    with superuser(db_url) as conn:
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'ledger.rows'::regclass"
        ).fetchone()
        updatable = conn.execute(
            "SELECT is_updatable, is_insertable_into, is_trigger_updatable, is_trigger_deletable,"
            " is_trigger_insertable_into FROM information_schema.views"
            " WHERE table_schema = 'ledger' AND table_name = 'rows'"
        ).fetchone()
    assert options == (["security_invoker=true"],)
    assert updatable == ("NO",) * 5
    stranger = f"ledger_view_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url) as conn:  # one transaction, rolled back: the role never exists
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(stranger)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA ledger TO {}").format(sql.Identifier(stranger)))
        conn.execute(sql.SQL("GRANT SELECT ON ledger.rows TO {}").format(sql.Identifier(stranger)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(stranger)))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table events"):
            conn.execute("SELECT count(*) FROM ledger.rows")
        conn.rollback()
