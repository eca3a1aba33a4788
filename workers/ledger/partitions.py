"""ledger.events' monthly partitions: made ahead of time so that rows never wait for one.

`reservations migrate` and `reservations ledger partitions` call :func:`ensure_partitions`; the
SQL function it calls (migration 0004) names each partition ``events_YYYY_MM`` after its first
UTC month and guards it as the parent is guarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import Connection, sql
from psycopg.rows import class_row

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
        return cur.fetchall()
