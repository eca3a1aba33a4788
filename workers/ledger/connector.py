"""The ledger's only door to PostgreSQL: connections, the pool, the role, error translation.

This is the one module that looks at psycopg's exceptions; everything above it sees the
project's own (:mod:`workers.errors`). Every connection it hands out runs as one of the
ledger's roles (``SET ROLE``), so that even with a superuser ``DATABASE_URL`` the application
cannot update the ledger or switch off its guards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.numeric import IntLoader

from workers.errors import (
    AppendOnlyViolation,
    LedgerError,
    LedgerPermissionDenied,
    LedgerUnavailable,
    ReservationBusy,
    UnknownAction,
    unreachable,
)
from workers.ledger.models import Role

APPEND_ONLY_SQLSTATE = "RL001"
UNKNOWN_ACTION_SQLSTATE = "RL002"
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

Connection = psycopg.Connection[Any]


@contextmanager
def translated() -> Iterator[None]:
    """Turn driver errors into the project's errors, keeping the driver's as the cause."""
    try:
        yield
    except psycopg_pool.PoolTimeout as exc:
        raise LedgerUnavailable(f"no ledger connection available: {exc}") from exc
    except psycopg.Error as exc:
        raise _translate(exc) from exc


def _translate(exc: psycopg.Error) -> LedgerError:
    message = (exc.diag.message_primary or str(exc)).strip()
    if exc.sqlstate == APPEND_ONLY_SQLSTATE:
        return AppendOnlyViolation(message)
    if exc.sqlstate == UNKNOWN_ACTION_SQLSTATE:
        found = _UUID.search(message)
        return UnknownAction(found.group(0) if found else message)
    if isinstance(exc, pg_errors.LockNotAvailable):
        return ReservationBusy(message)
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return LedgerPermissionDenied(message)
    if isinstance(exc, psycopg.OperationalError):
        return LedgerUnavailable(message)
    return LedgerError(message)


# SQLSTATEs of a server that is there but cannot take us yet (too many clients, starting up):
# waiting may help, so the pool waits for it instead of failing at once.
_WAIT_SQLSTATES = ("53", "57P03")


def reach(conninfo: str, timeout: float = 5.0) -> None:
    """Fail at once, in one line, when the ledger's server cannot be reached or refuses us (down,
    wrong host, port, database, role or password): a pool would retry for its whole time-out."""
    try:
        psycopg.connect(conninfo, connect_timeout=max(1, round(timeout))).close()
    except psycopg.OperationalError as exc:
        if exc.sqlstate is not None and exc.sqlstate.startswith(_WAIT_SQLSTATES):
            return
        raise _unreachable(conninfo, exc) from exc


def _unreachable(conninfo: str, exc: psycopg.Error) -> LedgerUnavailable:
    return LedgerUnavailable(unreachable("the ledger's PostgreSQL", where(conninfo), _reason(exc)))


def where(conninfo: str) -> str:
    """``host:port/dbname`` of a connection string, without its user or password."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "an unparseable DATABASE_URL"
    host = params.get("host") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{database_name(conninfo)}"


def _reason(exc: psycopg.Error) -> str:
    """The driver's reason on one line, without the host and port it repeats."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first.rpartition(" failed: ")[2].replace("FATAL:  ", "")


def prepare(conn: Connection, role: Role | None) -> None:
    """Make a fresh connection ledger-ready: autocommit, xid8 as int, and the role."""
    conn.autocommit = True
    conn.adapters.register_loader("xid8", IntLoader)
    if role is not None:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role.value)))


@contextmanager
def connect(conninfo: str, role: Role | None, **kwargs: Any) -> Iterator[Connection]:
    """One connection outside the pool (migrations, the CLI, tests), errors translated."""
    with translated():
        try:
            conn = psycopg.connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            raise _unreachable(conninfo, exc) from exc
        try:
            prepare(conn, role)
            yield conn
        finally:
            conn.close()


class Connector:
    """A pool of connections that all run as ``role``.

    ``statement_timeout`` (seconds) bounds every statement on the server, so that a run never
    waits on the database for longer than that, whatever the worker pool (Celery's time limits
    do not apply to the threads pool).
    """

    def __init__(
        self,
        conninfo: str,
        role: Role = Role.WRITER,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        statement_timeout: float | None = None,
        name: str = "ledger",
    ) -> None:
        self.role = role
        self._conninfo = conninfo
        self._statement_timeout = statement_timeout
        self._pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            name=name,
            open=False,
            configure=self._configure,
        )

    def _configure(self, conn: Connection) -> None:
        prepare(conn, self.role)
        if self._statement_timeout is not None:  # a SET, not a startup option: PgBouncer refuses those
            milliseconds = f"{round(self._statement_timeout * 1000)}ms"
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (milliseconds,))

    def open(self, wait: bool = True, timeout: float = 10.0) -> None:
        """Open the pool; with ``wait``, a server out of reach fails at once (:func:`reach`)."""
        if wait:
            reach(self._conninfo, timeout)
        with translated():
            self._pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Connector:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        with translated(), self._pool.connection() as conn:
            yield conn


class BoundConnection:
    """One connection that a caller already holds, offered where a :class:`Connector` is expected.

    ``PostgresLedgerWriter.lock`` lends its locked connection this way, so an action holds one
    connection for its whole run instead of one for the lock and more for the writes.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        with translated():
            yield self._conn

    def close(self) -> None:
        """The lender closes (returns) the connection, not the borrower."""


def with_database(conninfo: str, dbname: str) -> str:
    """The same connection string, pointed at another database."""
    return make_conninfo(conninfo, dbname=dbname)


def database_name(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    name = params.get("dbname") or params.get("user") or "postgres"
    return str(name)


def ensure_database(conninfo: str, maintenance_db: str = "postgres") -> bool:
    """Create the database ``conninfo`` names if it does not exist; True when it was created."""
    name = database_name(conninfo)
    with connect(with_database(conninfo, maintenance_db), None) as conn:
        exists = conn.execute("SELECT FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists is not None:
            return False
        with translated():
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except pg_errors.DuplicateDatabase:
                return False  # created meanwhile by a concurrent migrator
        return True


def drop_database(conninfo: str, maintenance_db: str = "postgres") -> None:
    """Drop the database ``conninfo`` names, disconnecting its sessions (tests, benchmarks)."""
    name = database_name(conninfo)
    with connect(with_database(conninfo, maintenance_db), None) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
