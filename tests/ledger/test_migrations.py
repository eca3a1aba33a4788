"""Migrations: from an empty database, twice; refusal of unknown ones; equal to schemas/ledger.sql."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.ledger.conftest import superuser
from workers.cli import main
from workers.core.state_machine import Status
from workers.core.vocabulary import SOURCES
from workers.errors import MigrationError
from workers.ledger.connector import database_name, drop_database, ensure_database, with_database
from workers.ledger.migrations import AppliedMigration, Migration, known_migrations, migrate, pending
from workers.ledger.models import EventKind, Outcome, Source


@pytest.fixture
def empty_url(admin_url: str) -> Iterator[str]:
    url = with_database(admin_url, f"ledger_empty_{uuid.uuid4().hex[:8]}")
    yield url
    drop_database(url)


def test_migrate_creates_the_database_and_is_idempotent(empty_url: str) -> None:
    first = migrate(empty_url)
    assert [str(m) for m in first] == [str(m) for m in known_migrations()]
    assert migrate(empty_url) == []
    with superuser(empty_url) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM ledger.schema_migrations").fetchall()
    assert [(v, n, c) for v, n, c in rows] == [(m.version, m.name, m.checksum) for m in known_migrations()]


def test_cli_migrate_twice(empty_url: str) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["migrate", "--database-url", empty_url])
    assert first.exit_code == 0, first.output
    assert "applied: 0001_ledger" in first.output
    second = runner.invoke(main, ["migrate"], env={"DATABASE_URL": empty_url, "LEDGER_MIGRATION_URL": ""})
    assert second.exit_code == 0, second.output
    assert "up to date" in second.output
    check = runner.invoke(main, ["migrate", "--check", "--database-url", empty_url])
    assert check.exit_code == 0


def test_refuses_a_database_with_an_unknown_migration(fresh_db_url: str) -> None:
    with superuser(fresh_db_url) as conn:
        conn.execute(
            "INSERT INTO ledger.schema_migrations (version, name, checksum) VALUES (99, 'future', 'x')"
        )
    with pytest.raises(MigrationError, match="0099_future"):
        migrate(fresh_db_url)
    result = CliRunner().invoke(main, ["migrate", "--database-url", fresh_db_url])
    assert result.exit_code == 2
    assert "does not know" in result.output


def test_pending_refuses_a_changed_migration() -> None:
    known = [Migration(1, "ledger", "CREATE TABLE t ()")]
    changed = [AppliedMigration(1, "ledger", "0" * 64)]
    with pytest.raises(MigrationError, match="differs"):
        pending(known, changed)
    assert pending(known, []) == known
    assert pending(known, [AppliedMigration(1, "ledger", known[0].checksum)]) == []


def _schema_dump(url: str) -> str:
    dump = subprocess.run(
        ["pg_dump", "--schema-only", "--schema=ledger", url], check=True, capture_output=True, text=True
    ).stdout
    lines = [line for line in dump.splitlines() if line and not line.startswith("--")]
    return re.sub(r"\\restrict \S+|\\unrestrict \S+", "", "\n".join(lines))


def test_migrations_give_the_reference_schema(db_url: str, fresh_db_url: str) -> None:
    """schemas/ledger.sql is the ledger as the migrations leave it, to read in one place."""
    schema = (Path(__file__).resolve().parents[2] / "schemas" / "ledger.sql").read_text(encoding="utf-8")
    reference = with_database(fresh_db_url, database_name(fresh_db_url) + "_ref")
    try:
        assert ensure_database(reference)
        with superuser(reference) as conn, conn.transaction():
            conn.execute(schema.encode())
        assert _schema_dump(reference) == _schema_dump(db_url)
    finally:
        drop_database(reference)


def test_the_sql_vocabulary_is_the_pythons(db_url: str) -> None:
    with superuser(db_url) as conn:
        checks = dict(
            conn.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'ledger.events'::regclass AND contype = 'c'"
            )
        )
    kinds = set(re.findall(r"'(\w+)'::text", checks["events_kind_check"]))
    outcomes = set(re.findall(r"'(\w+)'::text", checks["events_outcome_check"]))
    statuses = set(re.findall(r"'(\w+)'::text", checks["events_to_status_check"]))
    sources = set(re.findall(r"'(\w+)'::text", checks["events_source_check"]))
    assert sources == {s.value for s in Source} == set(SOURCES)
    assert kinds == {k.value for k in EventKind}
    assert outcomes == {o.value for o in Outcome}
    assert statuses == {s.value for s in Status}
