"""The ledger's reader: what auditors, operators and the tests read (the reader role).

Reads only ever show rows below the horizon of the oldest ledger writer still in flight (not of
any transaction on the cluster: ``ledger.visible_horizon``), in ledger order ``(tx_id, position)``,
so a reader that pages with a :class:`Cursor` misses nothing (see ops/LEDGER.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, LiteralString, TypedDict, Unpack

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from workers.core.parameters import PARAMETERS
from workers.core.redaction import pii_digest
from workers.errors import LedgerError
from workers.ledger.models import (
    ActionRecord,
    ChainRow,
    ChainSeals,
    CheckpointSeen,
    Cursor,
    LedgerRow,
    OutcomeCount,
    Problem,
    ReservationState,
    Role,
)
from workers.ledger.pooled import Pooled
from workers.ledger.queries import QUERIES
from workers.ledger.verify import verify

# Columns a history query may filter on by equality.
HISTORY_COLUMNS: tuple[LiteralString, ...] = (
    "reservation_sid",
    "task_sid",
    "worker_sid",
    "workspace_sid",
    "action_id",
    "correlation_id",
    "kind",
    "outcome",
    "twilio_error_code",
)
# Columns whose index is on ledger.key64(column), not on the column itself.
_KEYED_COLUMNS = frozenset({"worker_sid"})
# An action's facts that its rows after the received one leave to the registry (migration 0012):
# a filter matches the value as read, the registry's for those rows.
_ACTION_FACTS = frozenset({"workspace_sid", "task_sid", "correlation_id"})
# Those found through the registry's index of them (then events_action), and on the row itself.
_REGISTRY_FOUND = frozenset({"task_sid", "correlation_id"})
_PII_NAMES = tuple(sorted({name for p in PARAMETERS if p.pii for name in (p.wire, p.keyword)}))
_START = Cursor(0, 0)
# A time range's page reads the range's rows first when there are fewer than this many (see the
# history_in_range query); a denser range walks the ledger's order instead.
RANGE_FIRST_ROWS = 10_000
# Filters whose own index finds their rows: with any of them, a time range is not read first.
_INDEXED_FILTERS = frozenset(
    {"reservation_sid", "task_sid", "worker_sid", "action_id", "correlation_id", "outcome", "pii_value"}
)


class HistoryFilters(TypedDict, total=False):
    """What ``history`` filters on: a column equal to a value (``HISTORY_COLUMNS``), ``since``
    (inclusive) and ``until`` (exclusive) on ``recorded_at``, and ``pii_value``."""

    reservation_sid: str | None
    task_sid: str | None
    worker_sid: str | None
    workspace_sid: str | None
    action_id: uuid.UUID | None
    correlation_id: str | None
    kind: str | None
    outcome: str | None
    twilio_error_code: int | None
    since: datetime | None
    until: datetime | None
    pii_value: str | None


def _action_fact_filter(column: LiteralString) -> sql.Composable:
    """The filter on an action's fact as history reads it (queries.sql): the row's own value for
    received and rejected_input rows and rows of no action, else the row's or its registry
    entry's. A correlation id or task finds its rows through its actions in the registry
    (``actions_correlation``, ``actions_task``, then ``events_action``: a task or a correlation id
    has a few actions) or on the row itself (``events_correlation``, ``events_task``: received rows,
    rows of no action and rows written before 0012); a workspace walks ledger order, as before (a
    contact centre has a handful)."""
    value = sql.Placeholder(column)
    name = sql.Identifier(column)
    read_as = sql.SQL(
        "AND (CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.{name}"
        " ELSE coalesce(e.{name}, a.{name}) END) = {value}"
    ).format(name=name, value=value)
    if column not in _REGISTRY_FOUND:
        return read_as
    found = sql.SQL(
        "AND (e.action_id = ANY (ARRAY(SELECT x.action_id FROM ledger.actions x"
        " WHERE ledger.key64(x.{name}) = ledger.key64({value}::text) AND x.{name} = {value}))"
        " OR (ledger.key64(e.{name}) = ledger.key64({value}::text) AND e.{name} = {value}))"
    ).format(name=name, value=value)
    return sql.SQL(" ").join([found, read_as])


class LedgerReader(Pooled):
    """Select-only queries over one connection pool; thread-safe. The PII key serves only to
    hash a value an auditor searches for."""

    ROLE = Role.READER

    def ping(self) -> None:
        """Raise LedgerError unless the database answers and this role can read the ledger."""
        with self._connector.connection() as conn:
            conn.execute(QUERIES["ping"])

    def action(self, action_id: uuid.UUID) -> ActionRecord | None:
        """The registry's entry for ``action_id``, if it was ever received."""
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(ActionRecord)) as cur:
            cur.execute(QUERIES["get_action"], {"action_id": action_id})
            return cur.fetchone()

    def reservation(self, reservation_sid: str) -> ReservationState | None:
        """The cached status and ETag of a reservation: its last recorded transition."""
        with (
            self._connector.connection() as conn,
            conn.cursor(row_factory=class_row(ReservationState)) as cur,
        ):
            cur.execute(QUERIES["get_reservation"], {"reservation_sid": reservation_sid})
            return cur.fetchone()

    def history(
        self, *, after: Cursor | None = None, limit: int = 1000, **filters: Unpack[HistoryFilters]
    ) -> list[LedgerRow]:
        """Ledger rows matching every filter given, in ledger order, after ``after``.

        ``since`` is inclusive and ``until`` exclusive (``recorded_at``, the database clock).
        ``pii_value`` finds the rows whose parameters held that value, through its keyed hash.
        Page with ``after=rows[-1].cursor``.
        """
        query, params = self._history_query(after, limit, filters)
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(LedgerRow)) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def detached_months(self) -> list[date]:
        """The archived months whose rows left ``ledger.events`` (``reservations ledger archive``)."""
        with self._connector.connection() as conn:
            return [row[0] for row in conn.execute(QUERIES["detached_months"])]

    def explain_history(
        self,
        *,
        after: Cursor | None = None,
        limit: int = 1000,
        analyze: bool = False,
        **filters: Unpack[HistoryFilters],
    ) -> dict[str, Any]:
        """The plan PostgreSQL chooses for ``history(**filters)`` (EXPLAIN, JSON; nothing runs
        unless ``analyze``: then the query runs and the plan says how many rows each step read)."""
        query, params = self._history_query(after, limit, filters)
        explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}" if analyze else "EXPLAIN (FORMAT JSON) {}")
        with self._connector.connection() as conn, conn.cursor() as cur:
            cur.execute(explain.format(query), params)
            row = cur.fetchone()
        if row is None:  # pragma: no cover - EXPLAIN always answers
            raise LedgerError("EXPLAIN returned nothing")
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan

    def settled_actions(
        self,
        outcomes: Iterable[str],
        *,
        reservation_sid: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 10_000,
    ) -> list[ActionRecord]:
        """Registry entries whose outcome is one of ``outcomes``, settled in [since, until).

        For operator commands (redrive): a scan of the registry, oldest outcome first.
        """
        params = {
            "outcomes": list(outcomes),
            "reservation_sid": reservation_sid,
            "since": since,
            "until": until,
            "limit": limit,
        }
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(ActionRecord)) as cur:
            cur.execute(QUERIES["settled_actions"], params)
            return cur.fetchall()

    def chain(self, chain_key: str) -> tuple[list[ChainRow], ChainSeals]:
        """One hash chain's rows, each checked, and its head and latest seal (one snapshot)."""
        with self._connector.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with conn.cursor(row_factory=class_row(ChainRow)) as cur:
                rows = cur.execute(QUERIES["chain_rows"], {"chain_key": chain_key}).fetchall()
            with conn.cursor(row_factory=class_row(ChainSeals)) as cur:
                seals = cur.execute(QUERIES["chain_seals"], {"chain_key": chain_key}).fetchone()
        if seals is None:  # pragma: no cover - the query always answers one row
            raise LedgerError("chain_seals returned nothing")
        return rows, seals

    def outcome_counts(self, span: int, bucket: int) -> list[OutcomeCount]:
        """Outcomes settled in the last ``span`` seconds, per ``bucket`` seconds back from now."""
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(OutcomeCount)) as cur:
            cur.execute(QUERIES["outcome_counts"], {"span": span, "bucket": bucket})
            return cur.fetchall()

    def attention(self, outcomes: Iterable[str], limit: int) -> list[ActionRecord]:
        """The latest actions that ended with one of ``outcomes`` and were never redriven."""
        params = {"outcomes": list(outcomes), "limit": limit}
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(ActionRecord)) as cur:
            cur.execute(QUERIES["attention_actions"], params)
            return cur.fetchall()

    def verify(self) -> list[Problem]:
        """Everything ``reservations ledger verify`` would report (one consistent snapshot)."""
        with self._connector.connection() as conn:
            return verify(conn)

    def last_checkpoint(self) -> CheckpointSeen | None:
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(CheckpointSeen)) as cur:
            cur.execute(QUERIES["last_checkpoint"])
            return cur.fetchone()

    def _history_query(
        self, after: Cursor | None, limit: int, filters: HistoryFilters
    ) -> tuple[sql.Composed, dict[str, Any]]:
        given: dict[str, Any] = dict(filters)
        unknown = set(given) - set(HISTORY_COLUMNS) - {"since", "until", "pii_value"}
        if unknown:
            raise TypeError(f"history() got unknown filters: {', '.join(sorted(unknown))}")
        first_page = after is None
        after = after or _START
        params: dict[str, Any] = {
            "after_tx_id": str(after.tx_id),
            "after_position": after.position,
            "limit": limit,
        }
        clauses: list[sql.Composable] = []
        for column in HISTORY_COLUMNS:
            if given.get(column) is not None:
                params[column] = given[column]
                if column in _ACTION_FACTS:
                    clauses.append(_action_fact_filter(column))
                    continue
                if column == "reservation_sid":
                    continue  # its chain (below): a row stores its SID as its chain key (0012)
                clauses.append(
                    sql.SQL("AND e.{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
                )
                if column in _KEYED_COLUMNS:
                    # Their indexes hold a 64-bit key of the value (migration 0004, ledger.key64).
                    clauses.append(
                        sql.SQL("AND ledger.key64(e.{}) = ledger.key64({})").format(
                            sql.Identifier(column), sql.Placeholder(column)
                        )
                    )
        if given.get("reservation_sid") is not None:
            # A reservation's rows are its hash chain: the chain's index finds them (migration 0004),
            # by the chain key's 64-bit key and the key itself; a row stores the SID as its chain
            # key only (migration 0012), read as queries.sql's history reads it.
            clauses.append(
                sql.SQL(
                    "AND ledger.key64(e.chain_key) = ledger.key64({sid}::text) AND e.chain_key = {sid}"
                    " AND coalesce(e.reservation_sid, nullif(e.chain_key, 'rejected_input')) = {sid}"
                ).format(sid=sql.Placeholder("reservation_sid"))
            )
        if given.get("since") is not None:
            clauses.append(sql.SQL("AND e.recorded_at >= {}").format(sql.Placeholder("since")))
            params["since"] = given["since"]
        if given.get("until") is not None:
            clauses.append(sql.SQL("AND e.recorded_at < {}").format(sql.Placeholder("until")))
            params["until"] = given["until"]
        if given.get("pii_value") is not None:
            digest = pii_digest(given["pii_value"], self._pii_key)
            alternatives = []
            for index, name in enumerate(_PII_NAMES):
                placeholder = f"pii_{index}"
                params[placeholder] = Jsonb({name: digest})
                alternatives.append(sql.SQL("e.params @> {}").format(sql.Placeholder(placeholder)))
            clauses.append(sql.SQL("AND ({})").format(sql.SQL(" OR ").join(alternatives)))
        # The first page of a closed time range with no more selective filter: later pages start
        # from a cursor inside the range, where the ledger's order walk meets its rows at once.
        first_of_range = first_page and given.get("since") is not None and given.get("until") is not None
        if first_of_range and not any(given.get(name) is not None for name in _INDEXED_FILTERS):
            params["range_rows"] = RANGE_FIRST_ROWS
            template = QUERIES["history_in_range"]
        else:
            template = QUERIES["history"]
        query = sql.SQL(template).format(filters=sql.SQL(" ").join(clauses))
        return query, params
