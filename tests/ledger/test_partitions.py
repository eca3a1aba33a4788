"""ledger.events is partitioned by month (migration 0004): every guarantee holds on every partition."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from tests.audit.test_plans import nodes
from tests.ledger.conftest import accept_applied, make_action, open_reader, open_writer, superuser
from workers.cli import main
from workers.errors import AppendOnlyViolation, LedgerPermissionDenied
from workers.ledger.connector import Connector, connect, drop_database, ensure_database, with_database
from workers.ledger.migrations import known_migrations, migrate
from workers.ledger.models import Role
from workers.ledger.partitions import ensure_partitions, list_partitions
from workers.ledger.queries import QUERIES
from workers.ledger.verify import verify
from workers.ledger.writer import PostgresLedgerWriter


def month_name(when: datetime) -> str:
    return f"events_{when:%Y_%m}"


def shift(when: datetime, months: int) -> datetime:
    index = when.year * 12 + when.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


THIS_MONTH = month_name(datetime.now(UTC))
NEXT_MONTH = month_name(shift(datetime.now(UTC), 1))
NEXT_MONTH_3 = month_name(shift(datetime.now(UTC), 3))


@pytest.fixture(scope="module", autouse=True)
def some_rows(writer: PostgresLedgerWriter) -> None:
    accept_applied(writer, make_action())


def test_migrate_made_this_month_and_three_ahead_and_rows_land_in_theirs(db_url: str) -> None:
    with connect(db_url, Role.READER) as conn:
        listed = list_partitions(conn)
        where = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM ledger.events").fetchall()
    names = [p.partition_name for p in listed]
    assert names == [month_name(shift(datetime.now(UTC), n)) for n in range(4)] + ["events_default"]
    assert where == [(f"ledger.{THIS_MONTH}",)]
    assert listed[0].has_rows
    assert not listed[1].has_rows


@pytest.mark.parametrize("partition", [THIS_MONTH, NEXT_MONTH, "events_default"])
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.{} SET detail = 'x'",
        "DELETE FROM ledger.{}",
        "TRUNCATE ledger.{}",
        "UPDATE ledger.{} SET detail = 'x' WHERE false",
    ],
)
def test_a_partition_named_directly_is_append_only_too(db_url: str, partition: str, statement: str) -> None:
    with superuser(db_url) as conn, pytest.raises(psycopg.Error, match="append-only") as caught:
        conn.execute(statement.format(partition))
    assert caught.value.sqlstate == "RL001"


@pytest.mark.parametrize("role", [Role.WRITER, Role.READER])
@pytest.mark.parametrize(
    "statement",
    [
        f"ALTER TABLE ledger.events DETACH PARTITION ledger.{THIS_MONTH}",
        f"DROP TABLE ledger.{THIS_MONTH}",
        f"TRUNCATE ledger.{THIS_MONTH}",
        f"DELETE FROM ledger.{THIS_MONTH}",
        f"ALTER TABLE ledger.{THIS_MONTH} DISABLE TRIGGER USER",
        "CREATE TABLE ledger.events_2999_01 PARTITION OF ledger.events"
        " FOR VALUES FROM ('2999-01-01') TO ('2999-02-01')",
        "SELECT ledger.create_events_partitions(12, 1)",
    ],
)
def test_the_application_roles_cannot_detach_drop_or_make_partitions(
    db_url: str, role: Role, statement: str
) -> None:
    connector = Connector(db_url, role, min_size=1, max_size=1)
    with connector, pytest.raises(LedgerPermissionDenied), connector.connection() as conn:
        conn.execute(statement)


def test_a_partition_made_later_is_guarded_and_chained_like_the_first(fresh_db_url: str) -> None:
    far = datetime(2040, 1, 1, tzinfo=UTC)
    with superuser(fresh_db_url) as conn:
        conn.execute("SET ROLE reservations_owner")
        made = conn.execute("SELECT * FROM ledger.create_events_partitions(1, 1, %s)", (far,)).fetchall()
        assert made == [("events_2040_01",), ("events_2040_02",)]
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'ledger.events_2040_01'::regclass ORDER BY 1"
        ).fetchall()
        assert triggers == [("events_append_only",), ("events_append_only_row",), ("events_chain",)]
        for statement in ("TRUNCATE ledger.events_2040_01", "DELETE FROM ledger.events_2040_01"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(statement)
        # Idempotent: nothing more to make.
        assert (
            conn.execute("SELECT * FROM ledger.create_events_partitions(1, 1, %s)", (far,)).fetchall() == []
        )


def test_a_row_with_no_partition_for_its_month_is_kept_in_the_default_partition(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter
) -> None:
    with superuser(fresh_db_url) as conn:
        conn.execute(f"ALTER TABLE ledger.events DETACH PARTITION ledger.{THIS_MONTH}")
        conn.execute(f"DROP TABLE ledger.{THIS_MONTH}")
    accept_applied(fresh_writer, make_action())
    with connect(fresh_db_url, None) as conn:
        where = conn.execute("SELECT DISTINCT tableoid::regclass::text FROM ledger.events").fetchall()
        assert where == [("ledger.events_default",)]
        assert verify(conn) == []
        # The month's rows stay where they are: no partition is made over them, and a warning says so.
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        assert ensure_partitions(conn, 1) == []
    assert any("DEFAULT partition" in n for n in notices), notices
    with superuser(fresh_db_url) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute("DELETE FROM ledger.events_default")


def test_chain_seq_is_unique_in_its_chain_without_a_unique_index(fresh_db_url: str) -> None:
    """No index can make (chain_key, chain_seq) unique across partitions; the chain trigger hands
    out chain_seq under the chain's lock, so concurrent appends to one chain never share one."""
    threads, per_thread = 4, 25
    start = threading.Barrier(threads)

    def append() -> None:
        with connect(fresh_db_url, Role.OWNER) as conn:
            start.wait()
            for _ in range(per_thread):
                conn.execute(
                    "INSERT INTO ledger.events (kind, reservation_sid, chain_seq)"
                    " VALUES ('transition', 'WRone', 1)"
                )

    workers = [threading.Thread(target=append) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    with connect(fresh_db_url, Role.READER) as conn:
        seqs = [
            row[0]
            for row in conn.execute(
                "SELECT chain_seq FROM ledger.events WHERE chain_key = 'WRone' ORDER BY chain_seq"
            )
        ]
        assert seqs == list(range(1, threads * per_thread + 1))
        assert verify(conn) == []


def relations(plan: dict[str, Any]) -> set[str]:
    """The partitions of ledger.events a plan reads (history also reads the registry since 0012)."""
    return {
        node["Relation Name"] for node in nodes(plan) if node.get("Relation Name", "").startswith("events")
    }


def test_a_history_by_time_reads_only_the_partitions_of_that_time(db_url: str) -> None:
    now = datetime.now(UTC)
    with open_reader(db_url) as reader:
        this_month = reader.explain_history(limit=100, since=shift(now, 0), until=shift(now, 1))
        next_month = reader.explain_history(limit=100, since=shift(now, 1), until=shift(now, 2))
        since_next = reader.explain_history(limit=100, since=shift(now, 1))
        everything = reader.explain_history(limit=100)
    assert relations(this_month) == {THIS_MONTH}
    assert relations(next_month) == {NEXT_MONTH}
    assert THIS_MONTH not in relations(since_next)
    assert {THIS_MONTH, NEXT_MONTH, "events_default"} <= relations(everything)


def test_the_partitions_command_makes_ahead_and_lists(fresh_db_url: str) -> None:
    result = CliRunner().invoke(
        main, ["ledger", "partitions", "--ahead", "5", "--database-url", fresh_db_url]
    )
    assert result.exit_code == 0, result.output
    made = [month_name(shift(datetime.now(UTC), n)) for n in (4, 5)]
    for name in made:
        assert f"partition made: ledger.{name}" in result.output
    assert "ledger.events_default: DEFAULT (empty)" in result.output
    again = CliRunner().invoke(main, ["ledger", "partitions", "--ahead", "5", "--database-url", fresh_db_url])
    assert "partition made" not in again.output
    with superuser(fresh_db_url) as conn:
        owner = conn.execute(f"SELECT tableowner FROM pg_tables WHERE tablename = '{made[-1]}'").fetchone()
    assert owner == ("reservations_owner",)


def test_migrate_makes_partitions_ahead_too(fresh_db_url: str) -> None:
    result = CliRunner().invoke(main, ["migrate", "--ahead", "4", "--database-url", fresh_db_url])
    assert result.exit_code == 0, result.output
    assert f"partition made: ledger.{month_name(shift(datetime.now(UTC), 4))}" in result.output


def test_the_owner_is_refused_a_direct_change_of_a_partition_with_the_projects_error(db_url: str) -> None:
    with pytest.raises(AppendOnlyViolation), connect(db_url, Role.OWNER) as conn:
        conn.execute(f"DELETE FROM ledger.{THIS_MONTH}")


def test_a_ledger_migrated_before_0004_keeps_its_months_and_chains(admin_url: str) -> None:
    """A ledger that ran every other migration up to 0011 (0009 included) with rows from past
    months: 0004 makes a partition for each month since the first row, copies every row into its
    month, keeps 0009's index, 0012 and the migrations after it follow, and every chain verifies
    as before."""
    url = with_database(admin_url, f"ledger_pre4_{uuid.uuid4().hex[:8]}")
    ensure_database(url)
    try:
        with superuser(url) as conn:
            for migration in known_migrations():
                if migration.version == 4 or migration.version >= 12:
                    continue  # 0012 builds on 0004 (ledger.key64): a late 0004 comes before it
                with conn.transaction():
                    conn.execute(migration.text.encode())
                    conn.execute(
                        "INSERT INTO ledger.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [migration.version, migration.name, migration.checksum],
                    )
        with open_writer(url) as writer:
            accept_applied(writer, make_action())
        with superuser(url) as conn:
            # Rows of past months, chained as the trigger would have (it cannot be told the time).
            conn.execute("SET session_replication_role = replica")
            for chain, when in (("WRjanuary", "2025-01-15 10:00+00"), ("WRmarch", "2025-03-31 23:59+00")):
                conn.execute(
                    "INSERT INTO ledger.events (position, tx_id, recorded_at, chain_key, chain_seq,"
                    " prev_hash, row_hash, kind, reservation_sid, to_status, source)"
                    " VALUES (nextval('ledger.events_position_seq'), '3', %s, %s, 1, %s, '\\x00',"
                    " 'transition', %s, 'pending', 'event')",
                    (when, chain, bytes(32), chain),
                )
                conn.execute(
                    "UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE chain_key = %s",
                    (chain,),
                )
                conn.execute(
                    "INSERT INTO ledger.chain_heads SELECT chain_key, chain_seq, row_hash, position"
                    " FROM ledger.events WHERE chain_key = %s",
                    (chain,),
                )
            conn.execute("SET session_replication_role = DEFAULT")
            before = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
            # Every row's hash holds (verify's queries read the chain index of 0012, not here yet).
            assert conn.execute(
                "SELECT count(*) FROM ledger.events e WHERE e.row_hash <> ledger.event_hash(e)"
            ).fetchone() == (0,)
        later = [m.version for m in known_migrations() if m.version >= 12]
        assert [m.version for m in migrate(url)] == [4, *later]
        with superuser(url) as conn:
            where = dict(
                conn.execute(
                    "SELECT chain_key, tableoid::regclass::text FROM ledger.events"
                    " WHERE chain_key IN ('WRjanuary', 'WRmarch')"
                ).fetchall()
            )
            assert where == {"WRjanuary": "ledger.events_2025_01", "WRmarch": "ledger.events_2025_03"}
            made = [p.partition_name for p in list_partitions(conn)]
            assert made[:3] == ["events_2025_01", "events_2025_02", "events_2025_03"]
            assert made[-2:] == [NEXT_MONTH_3, "events_default"]
            assert conn.execute("SELECT count(*) FROM ledger.events").fetchone() == before
            assert conn.execute("SELECT to_regclass('ledger.events_outcome') IS NOT NULL").fetchone() == (
                True,
            )
            assert verify(conn) == []
    finally:
        drop_database(url)


def _ledger_rows_read(plan: dict[str, Any]) -> int:
    """The rows the plan's scans of ledger.events' partitions read: returned or filtered out."""
    return sum(
        (int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0)))
        * int(node.get("Actual Loops", 1))
        for node in nodes(plan)
        if str(node.get("Relation Name", "")).startswith("events")
    )


def test_listing_the_partitions_reads_one_row_of_each_not_the_ledger(ledger_url: str) -> None:
    """`ledger partitions` and doctor's upkeep check list the partitions with their rows'
    presence: each partition is asked by its range (one row read), never the whole ledger; the
    DEFAULT partition is asked by itself."""
    with superuser(ledger_url) as conn:
        found = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES['events_partitions']}").fetchone()
    assert found is not None
    with connect(ledger_url, Role.READER) as conn:
        listed = list_partitions(conn)
    assert _ledger_rows_read(found[0][0]["Plan"]) <= len(listed), found
    assert [p.has_rows for p in listed if p.lower is None] == [False]
    assert sum(p.has_rows for p in listed) >= 3
