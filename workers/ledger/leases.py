"""The governor's shared state in PostgreSQL: one budget per Twilio account, one lease per process.

Why PostgreSQL: every worker already reaches it, and a lease there expires by the database's
clock, so a process that dies (SIGKILL, a lost host) frees its share without anyone's help. It is
touched once per heartbeat (about a second) per process, never per request: each process then
admits requests against its granted share with a local semaphore (``workers.taskrouter.governor``).

A heartbeat is one transaction on a connection of its own (never one of the apply pool's, which
32 threads may hold): it locks the account's budget row, so heartbeats take turns and every
grant is computed from the leases as they are; the decisions are the pure core's
(``workers.core.governor``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from workers.core.governor import Budget, BudgetPolicy, Lease, Report, grant
from workers.ledger.connector import Connection, prepare, translated
from workers.ledger.models import Role
from workers.ledger.queries import parse, sql_text

QUERIES: Mapping[str, LiteralString] = parse(sql_text("leases.sql"))
# A heartbeat gives up on a database that does not answer within seconds (the process then keeps
# its last grant until its lease would have expired; see workers.taskrouter.governor).
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class LeaseRow:
    holder: str
    demand: int
    granted: int
    in_flight: int
    renewed_at: datetime
    expires_at: datetime
    expired: bool


class PostgresLeases:
    """Leases of ``account_sid``'s budget, over one connection of the writer role."""

    def __init__(self, conninfo: str, account_sid: str, policy: BudgetPolicy, ttl: float) -> None:
        self._conninfo = conninfo
        self.account_sid = account_sid
        self.policy = policy
        self.ttl = ttl
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def heartbeat(self, report: Report) -> Lease:
        """Renew ``report.holder``'s lease; raises a ``LedgerError`` when the database fails (the
        connection is then opened afresh next time)."""
        with self._lock, translated():
            conn = self._connection()
            try:
                with conn.transaction():
                    return self._heartbeat(conn, report)
            except Exception:
                self._discard()
                raise

    def _heartbeat(self, conn: Connection, report: Report) -> Lease:
        account = {"account_sid": self.account_sid}
        conn.execute(QUERIES["open_budget"], {**account, "ceiling": float(self.policy.ceiling)})
        row = _one(conn, "lock_budget", account)
        now = float(row["now"])
        stored = Budget(row["current"], row["updated_at"], row["decreased_at"], row["hold_until"])
        budget = stored.after(self.policy, now, report.throttled, report.retry_after)
        expired = tuple(r["holder"] for r in _all(conn, "expire_leases", account))
        others = [r for r in _all(conn, "live_leases", account) if r["holder"] != report.holder]
        demands = {r["holder"]: int(r["demand"]) for r in others}
        demands[report.holder] = report.demand
        held_by_others = sum(int(r["granted"]) for r in others)
        granted = grant(budget.slots, report.holder, demands, held_by_others)
        conn.execute(
            QUERIES["renew_lease"],
            {
                **account,
                "holder": report.holder,
                "demand": report.demand,
                # What is in flight stays counted until it lands, even above a shrunken grant, and
                # so does the share the process may still fill until it has read this answer.
                "granted": max(granted, report.in_flight, report.limit),
                "in_flight": report.in_flight,
                "ttl": self.ttl,
            },
        )
        conn.execute(
            QUERIES["store_budget"],
            {
                **account,
                "current": budget.current,
                "updated_at": budget.updated_at,
                "decreased_at": budget.decreased_at,
                "hold_until": budget.hold_until,
            },
        )
        fleet_in_flight = report.in_flight + sum(int(r["in_flight"]) for r in others)
        return Lease(granted, budget.slots, fleet_in_flight, len(others) + 1, expired)

    def drop(self, holder: str) -> None:
        """Give ``holder``'s share back now (a clean stop)."""
        with self._lock, translated():
            self._connection().execute(
                QUERIES["drop_lease"], {"account_sid": self.account_sid, "holder": holder}
            )

    def leases(self) -> list[LeaseRow]:
        """Every lease of the account, for operators and tests."""
        with self._lock, translated():
            rows = _all(self._connection(), "leases", {"account_sid": self.account_sid})
        return [LeaseRow(**row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            conn = connect_leases(self._conninfo)
            self._conn = conn
        return self._conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()


def connect_leases(conninfo: str) -> Connection:
    """A connection of the writer role that gives up on a stuck database within seconds."""
    conn = psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT)
    try:
        prepare(conn, Role.WRITER)
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(int(STATEMENT_TIMEOUT * 1000))))
    except BaseException:
        conn.close()
        raise
    return conn


def _one(conn: Connection, name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    row = conn.cursor(row_factory=dict_row).execute(QUERIES[name], params).fetchone()
    if row is None:
        raise LookupError(f"{name} returned no row")
    return row


def _all(conn: Connection, name: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    return conn.cursor(row_factory=dict_row).execute(QUERIES[name], params).fetchall()
