"""ledger.events' monthly partitions: made ahead of time so that rows never wait for one.

`reservations migrate` and `reservations ledger partitions` call :func:`ensure_partitions`; the
SQL function it calls (migration 0004) names each partition ``events_YYYY_MM`` after its first
UTC month and guards it as the parent is guarded.

`reservations ledger compact` calls :func:`compact_partition` for each month that is over: such a
month takes no new row (a row's ``recorded_at`` is the database clock, within a minute of its
insert), yet its indexes keep the half-empty pages that inserts all over their key range left (the
chain and worker indexes are about half full). It rebuilds them once, packed full, without
stopping writers or readers, and marks the partition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import psycopg
from psycopg import Connection, sql
from psycopg.rows import class_row

from workers.errors import LedgerError, ReservationBusy
from workers.ledger.connector import translated
from workers.ledger.models import Role
from workers.ledger.queries import QUERIES

# Months made ahead of the current one, and months per partition, unless told otherwise.
DEFAULT_AHEAD = 3
DEFAULT_MONTHS = 1


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of ledger.events: its range (None for the DEFAULT partition), and whether it
    holds rows."""

    partition_name: str
    lower: datetime | None
    upper: datetime | None
    has_rows: bool
    compacted: bool


def ensure_partitions(
    conn: Connection, ahead: int = DEFAULT_AHEAD, months: int = DEFAULT_MONTHS
) -> list[str]:
    """Make the missing partitions up to ``ahead`` months after this one (as the owner); the names made."""
    with translated(), conn.transaction():
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(Role.OWNER.value)))
        rows = conn.execute(
            QUERIES["create_events_partitions"], {"ahead": ahead, "months": months}
        ).fetchall()
    return [str(row[0]) for row in rows]


def list_partitions(conn: Connection) -> list[Partition]:
    """Every partition of ledger.events in time order, the DEFAULT partition last."""
    with translated(), conn.cursor(row_factory=class_row(Partition)) as cur:
        cur.execute(QUERIES["events_partitions"])
        listed = cur.fetchall()
        # The DEFAULT partition has no range to prune by: ask it directly (events_partitions).
        return [
            part
            if part.has_rows is not None
            else replace(part, has_rows=_holds_rows(conn, part.partition_name))
            for part in listed
        ]


def _holds_rows(conn: Connection, partition: str) -> bool:
    found = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT FROM ledger.{})").format(sql.Identifier(partition))
    ).fetchone()
    return bool(found and found[0])


# What a REINDEX CONCURRENTLY cut short (cancelled, connection lost, server restarted) leaves on the
# table: the new copy of an index (..._ccnew), or the old one it was swapping out (..._ccold),
# invalid, unused by any query, and only taking space.
_LEFTOVER = re.compile(r"_cc(new|old)[0-9]*$")


@dataclass(frozen=True, slots=True)
class Compaction:
    """One partition's indexes rebuilt packed full: their bytes before and after."""

    partition_name: str
    index_bytes_before: int
    index_bytes_after: int


@dataclass(frozen=True, slots=True)
class _Index:
    index_name: str
    method: str
    valid: bool
    bytes: int
    attached: bool


@contextmanager
def compacting(conn: Connection) -> Iterator[None]:
    """Hold the compaction lock for the block (queries.sql, compact_lock: a second run would take
    the first one's ``_ccnew`` copies, still being built, for leftovers); LedgerError at once when
    another run holds it (its server process may still be at work after its client went away)."""
    with translated():
        found = conn.execute(QUERIES["compact_lock"]).fetchone()
    if not (found and found[0]):
        raise LedgerError(
            "another `reservations ledger compact` is running on this ledger (or its server process"
            " is still finishing after its client went away): let it finish"
        )
    try:
        yield
    finally:
        # The lock ends with the session anyway: a connection lost mid-run must not hide its cause.
        with suppress(psycopg.Error):
            conn.execute(QUERIES["compact_unlock"])


def partitions_to_compact(conn: Connection, before: datetime) -> list[str]:
    """The partitions whose months are over by ``before``, hold rows and are not compacted yet."""
    with translated():
        rows = conn.execute(QUERIES["partitions_to_compact"], {"before": before}).fetchall()
    return [str(row[0]) for row in rows]


def _indexes(conn: Connection, partition: str) -> list[_Index]:
    with translated(), conn.cursor(row_factory=class_row(_Index)) as cur:
        cur.execute(QUERIES["partition_indexes"], {"partition": partition})
        return cur.fetchall()


def compact_partition(conn: Connection, partition: str, wait_limit: float | None = None) -> Compaction:
    """Rebuild each index of ``partition`` packed full (B-trees at fillfactor 100: no insert will
    need the room) with ``REINDEX INDEX CONCURRENTLY``, writers and readers going on, then mark the
    partition compacted. Its TOAST index is left alone (nearly empty, nothing to pack, and a
    leftover copy of it could only be dropped by a superuser).

    ``conn`` must be an autocommit connection as the owner (``connect(url, Role.OWNER)``), inside
    :func:`compacting`. A run cut short leaves invalid ``_ccnew``/``_ccold`` copies and no mark:
    the next run drops those and starts again. Rows and their hashes are not touched: an index
    holds no evidence.

    Each rebuild waits for the transactions open in the database (and for locks); ``wait_limit``
    seconds (None: no limit) bounds each such wait, past which it gives up (:class:`LedgerError`,
    the month left for the next run).
    """
    table = sql.Identifier(partition)
    if wait_limit is None:
        return _compact(conn, partition, table)
    with translated():
        found = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
        limit = f"{max(1, round(wait_limit * 1000))}ms"
        conn.execute("SELECT set_config('lock_timeout', %s, false)", [limit])
    try:
        return _compact(conn, partition, table)
    except ReservationBusy as exc:  # a lock timeout: here, the wait_limit
        raise LedgerError(
            f"ledger.{partition}: gave up after waiting {wait_limit:g} s for the transactions open in this"
            " database (or a lock) to end; run it again when they have (the next run finishes the month)"
        ) from exc
    finally:  # the caller's connection keeps its own setting (a connection cut has none to keep)
        with suppress(psycopg.Error):
            conn.execute("SELECT set_config('lock_timeout', %s, false)", [found[0] if found else "0"])


def _compact(conn: Connection, partition: str, table: sql.Identifier) -> Compaction:
    with translated():
        for index in _indexes(conn, partition):
            if not index.valid and not index.attached and _LEFTOVER.search(index.index_name):
                conn.execute(
                    sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(_qualified(index.index_name))
                )
        before = _indexes(conn, partition)
        for index in before:
            if index.method == "btree":  # BRIN and GIN have no fillfactor
                conn.execute(
                    sql.SQL("ALTER INDEX {} SET (fillfactor = 100)").format(_qualified(index.index_name))
                )
            conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(_qualified(index.index_name)))
        after = _indexes(conn, partition)
        compaction = Compaction(partition, sum(i.bytes for i in before), sum(i.bytes for i in after))
        at = datetime.now(UTC).isoformat(timespec="seconds")
        conn.execute(
            sql.SQL("COMMENT ON TABLE ledger.{} IS {}").format(
                table,
                sql.Literal(
                    f"compacted by reservations ledger compact at {at}:"
                    f" indexes {compaction.index_bytes_before} to {compaction.index_bytes_after} bytes"
                ),
            )
        )
    return compaction


def compact_closed(
    conn: Connection,
    before: datetime,
    started: Callable[[str], None] = lambda _name: None,
    wait_limit: float | None = None,
) -> Iterator[Compaction]:
    """Compact every partition whose months are over by ``before`` and that is not compacted yet,
    oldest first, holding the compaction lock (idempotent): each as it is done; ``started`` is
    told each partition's name before its rebuild; ``wait_limit`` as in :func:`compact_partition`."""
    with compacting(conn):
        for name in partitions_to_compact(conn, before):
            started(name)
            yield compact_partition(conn, name, wait_limit)


def _qualified(index_name: str) -> sql.Composable:
    """An index of the ledger's schema (partitions and their indexes live there only)."""
    return sql.Identifier("ledger", index_name)
