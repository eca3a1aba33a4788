"""Versioned, plain-SQL migrations: ``sql/migrations/NNNN_name.sql``, applied in order.

Each migration runs in its own transaction together with the row that records it in
``ledger.schema_migrations`` (version, name, SHA-256 of its text), so a migration is either
applied and recorded or neither. A database that records a migration this code does not ship,
or one whose text changed since it ran, is refused: running older code against a newer schema
is how ledgers get corrupted. Concurrent migrators are serialised by an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from workers.errors import MigrationError
from workers.ledger.connector import Connection, connect, ensure_database, translated

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# pg_advisory_lock key of `reservations migrate` ("LEDG", 1).
_MIGRATION_LOCK = (1279607879, -1)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def __str__(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str


def known_migrations() -> list[Migration]:
    """The migrations this code ships, in order."""
    folder = resources.files("workers.ledger").joinpath("sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # Numbers are handed out per change before the changes land, so one may be missing for a
    # while (or for good); two files with one number never are.
    if len(set(versions)) != len(versions) or (versions and versions[0] != 1):
        raise MigrationError(f"migrations must be numbered from 1, each number once: {versions}")
    return found


def applied_migrations(conn: Connection) -> list[AppliedMigration]:
    with translated():
        exists = conn.execute("SELECT to_regclass('ledger.schema_migrations') IS NOT NULL").fetchone()
        if exists is None or not exists[0]:
            return []
        rows = conn.execute("SELECT version, name, checksum FROM ledger.schema_migrations ORDER BY version")
        return [AppliedMigration(*row) for row in rows]


def pending(known: list[Migration], applied: list[AppliedMigration]) -> list[Migration]:
    """The migrations still to run, or :class:`MigrationError` if ``applied`` is not ours."""
    by_version = {m.version: m for m in known}
    for done in applied:
        ours = by_version.get(done.version)
        if ours is None:
            raise MigrationError(
                f"the database has migration {done.version:04d}_{done.name}, which this code does not know:"
                " it was migrated by a newer release; refusing to run"
            )
        if (ours.name, ours.checksum) != (done.name, done.checksum):
            raise MigrationError(
                f"migration {ours} differs from the one the database recorded as {done.version:04d}_"
                f"{done.name} (checksum {done.checksum[:12]}...); refusing to run"
            )
    done_versions = {a.version for a in applied}
    return [m for m in known if m.version not in done_versions]


def migrate(conninfo: str, *, create_database: bool = True) -> list[Migration]:
    """Apply the pending migrations to ``conninfo``; returns what ran (nothing the second time)."""
    if create_database:
        ensure_database(conninfo)
    known = known_migrations()
    with connect(conninfo, None) as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", _MIGRATION_LOCK)
        try:
            todo = pending(known, applied_migrations(conn))
            for migration in todo:
                with translated(), conn.transaction():
                    # A migration file is trusted package data, like the code that ships it.
                    conn.execute(migration.text.encode("utf-8"))
                    conn.execute(
                        "INSERT INTO ledger.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [migration.version, migration.name, migration.checksum],
                    )
            return todo
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", _MIGRATION_LOCK)


def check(conninfo: str) -> list[Migration]:
    """The migrations not yet applied (raises if the database is ahead of or apart from us)."""
    with connect(conninfo, None) as conn:
        return pending(known_migrations(), applied_migrations(conn))
