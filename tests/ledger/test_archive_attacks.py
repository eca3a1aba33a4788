"""The archive and incremental verification under attack: a writer committing during the archive,
an archive killed between export and detach, an incremental verify from a checkpoint older than
an archive, tampered exports, roles that may not archive, and hostile input."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from tests.ledger.conftest import seal, superuser
from tests.ledger.test_archive import _db_rows, _file_rows, _rewrite, _this_month
from workers.cli import main
from workers.core.sids import new_sid
from workers.errors import VerificationError
from workers.ledger import archive
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.verify import verify, verify_since
from workers.testing import scale

RECEIVE = (
    "SELECT ledger.record_received(%s, 'accept', %s, %s, NULL, NULL, NULL, NULL, NULL, NULL, 'tests',"
    " NULL, NULL, NULL)"
)


def _receive(url: str, reservation_sid: str) -> None:
    with superuser(url) as conn:
        conn.execute("SET ROLE reservations_writer")
        conn.execute(RECEIVE, [uuid.uuid4(), new_sid("WS"), reservation_sid])


def _waiting_on_a_lock(url: str, application: str) -> bool:
    with superuser(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() AND application_name = %s",
            [application],
        ).fetchone()
    return bool(found and found[0])


def _wait_until(check: Any, what: str) -> None:
    """Poll ``check`` (no timing asserted: a loaded machine only makes it slower)."""
    for _ in range(600):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def _with_application(url: str, name: str) -> str:
    return make_conninfo(url, application_name=name)


@pytest.mark.parametrize("in_default", [False, True], ids=["partition", "default-partition"])
def test_a_writer_committing_during_the_archive_loses_no_row(
    fresh_db_url: str, tmp_path: Path, in_default: bool
) -> None:
    """A row written before the month ended whose writer commits while the archive runs: the
    export did not see it, so the detach must not take it away unexported (nor, for a month in
    the DEFAULT partition, the record say the month is archived without it)."""
    this_month = _this_month()
    after = archive.next_month(this_month)
    if in_default:
        with superuser(fresh_db_url) as conn:
            part = archive.partition_name(this_month)
            conn.execute(f"ALTER TABLE ledger.events DETACH PARTITION ledger.{part}")
            conn.execute(f"DROP TABLE ledger.{part}")
    sid = new_sid("WR")
    _receive(fresh_db_url, sid)
    url = _with_application(fresh_db_url, "archiver")
    outcome: list[Any] = []
    with superuser(fresh_db_url) as late:
        late.execute("SET ROLE reservations_writer")
        with late.transaction():
            late.execute(RECEIVE, [uuid.uuid4(), new_sid("WS"), sid])

            def run() -> None:
                try:
                    outcome.append(archive.archive_before(url, after, tmp_path, now=after))
                except Exception as exc:
                    outcome.append(exc)

            running = threading.Thread(target=run)
            running.start()
            _wait_until(lambda: _waiting_on_a_lock(fresh_db_url, "archiver") or outcome, "the archive waits")
        running.join()
    assert isinstance(outcome[0], VerificationError), outcome
    assert "changed while it was archived" in str(outcome[0])
    # Run again: the late row is exported, and the ledger verifies.
    done = archive.archive_before(fresh_db_url, after, tmp_path, now=after)
    assert [(m.row_count, m.detached) for m in done] == [(2, not in_default)]
    assert len(_file_rows(tmp_path)) == 2
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify(conn) == []


def test_since_a_checkpoint_older_than_an_archived_month(fresh_db_url: str, tmp_path: Path) -> None:
    """A chain sealed at seq 1 by checkpoint 1, then rows 2-3 archived and detached, then row 4:
    --since-checkpoint 1 picks the chain up from its last archived row, not from seq 1."""
    this_month = _this_month()
    after = archive.next_month(this_month)
    sid = new_sid("WR")
    _receive(fresh_db_url, sid)
    first = seal(fresh_db_url)
    _receive(fresh_db_url, sid)
    _receive(fresh_db_url, sid)
    done = archive.archive_before(fresh_db_url, after, tmp_path, now=after)
    assert [m.detached for m in done] == [True]
    _receive(fresh_db_url, sid)  # in the DEFAULT partition: this month's is detached
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify(conn) == []
        assert verify_since(conn, first.checkpoint_id) == ([], 1)
        assert verify_since(conn, done[0].checkpoint_id) == ([], 1)
    # The new row must still follow the archived one.
    with superuser(fresh_db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE ledger.events e SET prev_hash = decode(repeat('22', 32), 'hex') WHERE chain_key = %s",
            [sid],
        )
        conn.execute("UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE chain_key = %s", [sid])
    with connect(fresh_db_url, Role.READER) as conn:
        problems, _ = verify_since(conn, first.checkpoint_id)
    assert "broken_link" in [p.kind for p in problems], problems


def test_verify_since_trusts_what_the_checkpoint_sealed(fresh_db_url: str) -> None:
    """A row altered before checkpoint N is not seen by --since-checkpoint N (the docs say so:
    it trusts what an earlier verify checked); the full verify finds it."""
    sid = new_sid("WR")
    _receive(fresh_db_url, sid)
    _receive(fresh_db_url, sid)
    sealed = seal(fresh_db_url)
    _receive(fresh_db_url, sid)
    with superuser(fresh_db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE ledger.events SET producer = 'forged' WHERE chain_key = %s AND chain_seq = 1", [sid]
        )
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify_since(conn, sealed.checkpoint_id) == ([], 1)
        assert [p.kind for p in verify(conn)] == ["altered"]


def _events_lock(url: str) -> psycopg.Connection[Any]:
    """A connection holding a lock on ledger.events: a detach waits for it."""
    holder = superuser(url)
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM ledger.events")
    return holder


def test_an_archive_killed_between_export_and_detach(ledger_url: str, tmp_path: Path) -> None:
    before = _this_month()
    expected = _db_rows(ledger_url, before)
    holder = _events_lock(ledger_url)
    env = {**os.environ, "LEDGER_MIGRATION_URL": _with_application(ledger_url, "killed-archive")}
    command = [
        sys.executable,
        "-c",
        "from workers.cli import main; main()",
        "ledger",
        "archive",
        "--before",
        f"{before:%Y-%m}",
    ]
    process = subprocess.Popen([*command, "--to", str(tmp_path)], env=env)
    try:
        _wait_until(lambda: _waiting_on_a_lock(ledger_url, "killed-archive"), "the archive waits to detach")
        assert list(tmp_path.glob("*.manifest.json"))  # exported ...
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        holder.rollback()
        holder.close()
    with superuser(ledger_url) as conn:
        _wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'killed-archive'"
                ).fetchone()
                == (0,)
            ),
            "the killed archive's session ends",
        )
        assert conn.execute("SELECT count(*) FROM ledger.archives").fetchone() == (0,)  # ... not recorded
    assert _db_rows(ledger_url, before) == expected  # nothing detached
    done = archive.archive_before(ledger_url, before, tmp_path)
    assert _file_rows(tmp_path) == expected  # row by row
    assert sum(m.row_count for m in done) == len(expected)
    assert archive.verify_archive(tmp_path) == ([], len(done))
    with connect(ledger_url, Role.READER) as conn:
        assert verify(conn) == []


def _appended(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A forged row in the middle of a chain: a copy of a row, one seq later."""
    copy = dict(rows[5])
    copy["chain_seq"] += 1
    return [*rows[:6], copy, *rows[6:]]


def test_an_added_row_is_found_offline(ledger_url: str, tmp_path: Path) -> None:
    done = archive.archive_before(ledger_url, _this_month(), tmp_path)
    _rewrite(tmp_path, done[0].month, _appended)
    problems, _ = archive.verify_archive(tmp_path)
    assert problems


def test_an_export_rewritten_with_its_manifest_is_found_against_the_database(
    ledger_url: str,
    tmp_path: Path,
) -> None:
    """The month's last row removed, with the events file, heads file and manifest made to match:
    offline it is coherent (the documented limit); against the database's record it is not."""
    done = archive.archive_before(ledger_url, _this_month(), tmp_path)
    events_name, heads_name, manifest_name = archive.file_names(done[0].month)
    argv = ["ledger", "verify", "--archive", str(tmp_path / manifest_name), "--database-url", ledger_url]
    honest = CliRunner().invoke(main, [*argv, "--against-database"])
    assert honest.exit_code == 0, honest.output
    assert "each manifest the one the database recorded" in honest.output
    _rewrite(tmp_path, done[0].month, lambda rows: rows[:-1])
    with gzip.open(tmp_path / events_name, "rt", encoding="utf-8") as lines:
        last = {row["chain_key"]: row for row in map(json.loads, lines)}
    with gzip.open(tmp_path / heads_name, "rt", encoding="utf-8") as lines:
        heads = [json.loads(line) for line in lines]
    with gzip.open(tmp_path / heads_name, "wt", encoding="utf-8") as out:
        out.writelines(
            json.dumps(
                {
                    **h,
                    "chain_seq": last[h["chain_key"]]["chain_seq"],
                    "row_hash": last[h["chain_key"]]["row_hash"],
                }
            )
            + "\n"
            for h in heads
            if h["chain_key"] in last
        )
    manifest = json.loads((tmp_path / manifest_name).read_text())
    manifest["heads"]["sha256"] = hashlib.sha256((tmp_path / heads_name).read_bytes()).hexdigest()
    (tmp_path / manifest_name).write_text(json.dumps(manifest))
    assert archive.verify_archive(tmp_path / manifest_name) == ([], 1)
    assert CliRunner().invoke(main, argv).exit_code == 0
    result = CliRunner().invoke(main, [*argv, "--against-database"])
    assert result.exit_code == 1, result.output
    assert "not the export the database recorded" in result.output


@pytest.mark.parametrize(
    "before",
    [
        "2026-13",
        "../../etc",
        "99999-01",
        "9999-12",
        "0000-01",
        "2026-1",
        "",
        "\uff12\uff10\uff12\uff16-01",
        "2026-01\n",
    ],
)
def test_hostile_months_get_one_line_and_exit_2(fresh_db_url: str, tmp_path: Path, before: str) -> None:
    result = CliRunner().invoke(
        main, ["ledger", "archive", "--before", before, "--to", str(tmp_path), "--database-url", fresh_db_url]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        len(
            [
                line
                for line in result.output.splitlines()
                if line.strip().startswith("Error") or line.startswith("error")
            ]
        )
        == 1
    )


@pytest.mark.parametrize("role", ["reservations_reader", "reservations_writer"])
def test_a_role_that_reads_the_ledger_cannot_archive_or_detach(
    ledger_url: str,
    tmp_path: Path,
    role: str,
) -> None:
    login = f"r19_{role}_{uuid.uuid4().hex[:6]}"
    with superuser(ledger_url) as conn:
        conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE {role}")
    try:
        url = make_conninfo(ledger_url, user=login)
        result = CliRunner().invoke(
            main,
            [
                "ledger",
                "archive",
                "--before",
                f"{_this_month():%Y-%m}",
                "--to",
                str(tmp_path),
                "--database-url",
                url,
            ],
        )
        assert result.exit_code == 2, result.output
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET ROLE {role}")
            part = archive.partition_name(date(_this_month().year, _this_month().month, 1))
            for statement in (
                f"ALTER TABLE ledger.events DETACH PARTITION ledger.{part}",
                "INSERT INTO ledger.archives (month, checkpoint_id, row_count, file_name, sha256, manifest,"
                " detached) VALUES ('2000-01-01', 1, 0, 'x', '\\x', '{}', true)",
                f"DROP TABLE ledger.{part}",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        assert not list(tmp_path.glob("*.manifest.json"))
    finally:
        with superuser(ledger_url) as conn:
            conn.execute(f"DROP ROLE {login}")


def test_a_partition_of_two_months_is_archived_whole(fresh_db_url: str, tmp_path: Path) -> None:
    """With --partition-months 2, archiving the first month of a partition must not detach the
    second one with it, unexported: the partition goes once both months are exported."""
    first = _months_back(3)
    with connect(fresh_db_url, Role.OWNER) as conn:
        conn.execute(
            "SELECT ledger.create_events_partitions(0, 2, %s)",
            [datetime(first.year, first.month, 1, tzinfo=UTC)],
        )
    end = datetime.now(UTC) - timedelta(minutes=1)
    shape = scale.plan(fresh_db_url, 3000, 0, datetime(first.year, first.month, 2, tzinfo=UTC), end)
    scale.load(fresh_db_url, shape, 0, shape.top, jobs=1)
    second, third = archive.next_month(first), archive.next_month(archive.next_month(first))
    expected = _db_rows(fresh_db_url, third)
    with pytest.raises(VerificationError, match=f"--before {third:%Y-%m}"):
        archive.archive_before(fresh_db_url, second, tmp_path)
    assert _db_rows(fresh_db_url, third) == expected  # nothing detached
    done = archive.archive_before(fresh_db_url, third, tmp_path)
    assert [(m.month, m.detached) for m in done] == [(first, True), (second, True)]
    assert _file_rows(tmp_path) == expected
    assert _db_rows(fresh_db_url, third) == []
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify(conn) == []


def _months_back(n: int) -> date:
    month = _this_month()
    for _ in range(n):
        month = (month - timedelta(days=1)).replace(day=1)
    return month
