"""`reservations ledger compact`: the months that are over get their indexes rebuilt packed full,
once, while the ledger goes on; no row changes; a run cut short is finished by the next; only the
owner may do it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from tests.ledger.conftest import open_reader, superuser, waits_for
from workers.cli import main
from workers.errors import ReservationsError
from workers.ledger import partitions
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.verify import verify


def _month_start() -> datetime:
    return datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _rows(url: str) -> list[tuple[object, ...]]:
    with superuser(url) as conn:
        return conn.execute("SELECT * FROM ledger.events ORDER BY position").fetchall()


def _index_state(url: str) -> dict[str, tuple[int, bool, bool]]:
    """Each index of each partition of ledger.events: its bytes, whether it is valid and attached
    to ledger.events' own index."""
    with superuser(url) as conn:
        return {
            name: (size, valid, attached)
            for name, size, valid, attached in conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid), i.indisvalid,"
                "       EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = c.oid)"
                "  FROM pg_inherits p JOIN pg_index i ON i.indrelid = p.inhrelid"
                "  JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE p.inhparent = 'ledger.events'::regclass"
            )
        }


def _closed(url: str) -> list[partitions.Partition]:
    with connect(url, Role.READER) as conn:
        listed = partitions.list_partitions(conn)
    return [p for p in listed if p.upper is not None and p.upper <= _month_start() and p.has_rows]


def _fillfactors(url: str, partition: str) -> dict[str, str | None]:
    """Each B-tree index of ``partition``: its fillfactor option, None when it has none."""
    with superuser(url) as conn:
        return {
            name: next((o.split("=")[1] for o in options or [] if o.startswith("fillfactor=")), None)
            for name, options in conn.execute(
                "SELECT c.relname, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'btree'",
                [f"ledger.{partition}"],
            )
        }


def _invalid_indexes(url: str) -> list[str]:
    """Every invalid index of the database, TOAST tables' included."""
    with superuser(url) as conn:
        return [
            str(r[0])
            for r in conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
        ]


def test_the_months_that_are_over_are_packed_once_and_no_row_changes(ledger_url: str) -> None:
    with superuser(ledger_url) as conn:  # two empty months long past: nothing to compact in them
        conn.execute("SET ROLE reservations_owner")
        conn.execute(
            "SELECT ledger.create_events_partitions(1, 1, date_trunc('month', now()) - interval '8 months')"
        )
    rows, before = _rows(ledger_url), _index_state(ledger_url)
    closed = _closed(ledger_url)
    assert len(closed) >= 2
    assert not any(p.compacted for p in closed)
    some = [str(row[3]) for row in rows[:: len(rows) // 7]]  # chain keys spread over the months
    with open_reader(ledger_url) as reader:
        histories = [reader.history(reservation_sid=sid) for sid in some]

    result = CliRunner().invoke(main, ["ledger", "compact", "--database-url", ledger_url])
    assert result.exit_code == 0, result.output
    for part in closed:
        assert f"compacted ledger.{part.partition_name}: indexes" in result.output

    after = _index_state(ledger_url)
    assert set(after) == set(before)  # the same indexes, each valid and still attached
    assert all(valid and attached for _size, valid, attached in after.values())
    for part in closed:
        mine = [name for name in after if name.startswith(part.partition_name + "_")]
        assert sum(after[n][0] for n in mine) < sum(before[n][0] for n in mine)
        assert set(_fillfactors(ledger_url, part.partition_name).values()) == {"100"}  # packed full
    listed = {p.partition_name: p for p in _closed(ledger_url)}
    assert all(listed[p.partition_name].compacted for p in closed)
    with connect(ledger_url, Role.READER) as conn:  # the month still going on is left as it is
        everything = partitions.list_partitions(conn)
        current = [p for p in everything if p.lower == _month_start()]
        assert current
        assert not current[0].compacted
        assert set(_fillfactors(ledger_url, current[0].partition_name).values()) == {None}
        empty = [
            p for p in everything if p.upper is not None and p.upper <= _month_start() and not p.has_rows
        ]
        assert len(empty) == 2
        assert not any(p.compacted for p in empty)
        assert verify(conn) == []
    assert _invalid_indexes(ledger_url) == []
    listing = CliRunner().invoke(main, ["ledger", "partitions", "--database-url", ledger_url])
    for part in closed:
        assert f"ledger.{part.partition_name}: " in listing.output
        assert (
            listing.output.split(f"ledger.{part.partition_name}: ")[1].splitlines()[0].endswith("(compacted)")
        )
    assert _rows(ledger_url) == rows
    with open_reader(ledger_url) as reader:
        assert [reader.history(reservation_sid=sid) for sid in some] == histories

    again = CliRunner().invoke(main, ["ledger", "compact", "--database-url", ledger_url])
    assert again.exit_code == 0, again.output
    assert "nothing to compact" in again.output
    assert _index_state(ledger_url) == after


def test_before_limits_the_months_compacted(ledger_url: str) -> None:
    oldest, *rest = _closed(ledger_url)
    assert oldest.upper is not None
    result = CliRunner().invoke(
        main, ["ledger", "compact", "--database-url", ledger_url, "--before", f"{oldest.upper:%Y-%m}"]
    )
    assert result.exit_code == 0, result.output
    listed = {p.partition_name: p.compacted for p in _closed(ledger_url)}
    assert listed[oldest.partition_name]
    assert rest
    assert not any(listed[p.partition_name] for p in rest)


def test_a_month_not_over_is_refused(ledger_url: str) -> None:
    next_month = (_month_start() + timedelta(days=32)).replace(day=1)
    result = CliRunner().invoke(
        main, ["ledger", "compact", "--database-url", ledger_url, "--before", f"{next_month:%Y-%m}"]
    )
    assert result.exit_code == 2
    assert f"error: {next_month:%Y-%m} is not over yet" in result.output
    with connect(ledger_url, Role.READER) as conn:
        assert not any(p.compacted for p in partitions.list_partitions(conn))


def test_two_runs_at_once_are_refused(ledger_url: str) -> None:
    """A run still at work (or its server process, after its client went away) holds the lock: a
    second run would take its ..._ccnew copies, still being built, for leftovers."""
    with connect(ledger_url, Role.OWNER) as first, partitions.compacting(first):
        result = CliRunner().invoke(main, ["ledger", "compact", "--database-url", ledger_url])
        assert result.exit_code == 2
        assert "another `reservations ledger compact` is running" in result.output
        assert not any(p.compacted for p in _closed(ledger_url))
    result = CliRunner().invoke(main, ["ledger", "compact", "--database-url", ledger_url])
    assert result.exit_code == 0, result.output
    assert all(p.compacted for p in _closed(ledger_url))


@pytest.mark.parametrize(
    ("cut", "cause"),
    [("pg_cancel_backend", "canceling statement"), ("pg_terminate_backend", "terminating connection")],
)
def test_a_compaction_cut_short_is_finished_by_the_next_run(ledger_url: str, cut: str, cause: str) -> None:
    """REINDEX CONCURRENTLY waits for the snapshots open in the database before it swaps; cancelled
    there, or its connection cut, it leaves invalid copies of the indexes (..._ccnew) and no mark,
    and the error names that cause. The next run drops them and compacts the month."""
    oldest = _closed(ledger_url)[0]
    failure: list[BaseException] = []
    with (
        psycopg.connect(ledger_url, autocommit=True) as blocker,
        connect(ledger_url, Role.OWNER) as owner,
    ):
        blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT count(*) FROM ledger.chain_heads")  # holds a snapshot

        def compact() -> None:
            try:
                with partitions.compacting(owner):
                    partitions.compact_partition(owner, oldest.partition_name)
            except BaseException as exc:  # reported to the test
                failure.append(exc)

        pid = owner.info.backend_pid
        worker = threading.Thread(target=compact)
        worker.start()
        if not waits_for(ledger_url, pid, "virtualxid"):
            pytest.fail("the compaction never waited for the open snapshot")
        with superuser(ledger_url) as admin:
            admin.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(cut)), [pid])
        worker.join(30)
        blocker.execute("ROLLBACK")
    assert failure
    assert isinstance(failure[0], ReservationsError)
    assert cause in str(failure[0])  # not the lock's release on the connection that was cut
    left = _index_state(ledger_url)
    assert any("_ccnew" in name and not valid for name, (_s, valid, _a) in left.items())
    assert not {p.partition_name: p for p in _closed(ledger_url)}[oldest.partition_name].compacted

    result = CliRunner().invoke(main, ["ledger", "compact", "--database-url", ledger_url])
    assert result.exit_code == 0, result.output
    final = _index_state(ledger_url)
    assert not any("_cc" in name for name in final)
    assert _invalid_indexes(ledger_url) == []  # nothing left behind, in pg_toast either
    assert all(valid and attached for _size, valid, attached in final.values())
    assert all(p.compacted for p in _closed(ledger_url))
    with connect(ledger_url, Role.READER) as conn:
        assert verify(conn) == []


def test_a_wait_limit_gives_up_on_an_open_transaction_and_the_next_run_finishes(ledger_url: str) -> None:
    """Another application's transaction open in the ledger's database holds every rebuild back:
    with --wait-limit the run gives up in that time, saying why, instead of hanging a cron job;
    the next run, once the transaction is over, finishes the month."""
    with psycopg.connect(ledger_url, autocommit=True) as blocker:
        blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT count(*) FROM ledger.chain_heads")  # holds a snapshot
        started = time.monotonic()
        result = CliRunner().invoke(
            main, ["ledger", "compact", "--database-url", ledger_url, "--wait-limit", "1"]
        )
        waited = time.monotonic() - started
        blocker.execute("ROLLBACK")
    assert result.exit_code == 2, result.output
    assert "gave up after waiting 1 s for the transactions open in this database" in result.output
    assert waited < 20  # one rebuild's wait, not the transaction's life
    assert not all(p.compacted for p in _closed(ledger_url))

    result = CliRunner().invoke(
        main, ["ledger", "compact", "--database-url", ledger_url, "--wait-limit", "30"]
    )
    assert result.exit_code == 0, result.output
    assert all(p.compacted for p in _closed(ledger_url))
    assert not any("_cc" in name for name in _index_state(ledger_url))
    assert _invalid_indexes(ledger_url) == []


def test_a_wait_limit_leaves_the_callers_own_lock_timeout(ledger_url: str) -> None:
    oldest = _closed(ledger_url)[0]
    with connect(ledger_url, Role.OWNER) as conn:
        conn.execute("SET lock_timeout = '7s'")
        with partitions.compacting(conn):
            partitions.compact_partition(conn, oldest.partition_name, wait_limit=30)
        assert conn.execute("SHOW lock_timeout").fetchone() == ("7s",)


@pytest.mark.parametrize("role", [Role.WRITER, Role.READER])
def test_only_the_owner_compacts(ledger_url: str, role: Role) -> None:
    oldest = _closed(ledger_url)[0]
    before = _index_state(ledger_url)
    with connect(ledger_url, role) as conn, pytest.raises(ReservationsError, match=r"owner|permission"):
        partitions.compact_partition(conn, oldest.partition_name)
    assert _index_state(ledger_url) == before
    assert not {p.partition_name: p for p in _closed(ledger_url)}[oldest.partition_name].compacted
