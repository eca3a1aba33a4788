"""The ledger's repository: what the workers, the intake and the audit tools call.

Each ``record_*`` method is one transaction and one round trip: it calls a function of the
migrations that takes the chain's lock, appends, and keeps the registry and the projection in
step. Reads only ever show rows below the horizon of the oldest transaction still in flight,
in ledger order ``(tx_id, position)``, so a reader that pages with a :class:`Cursor` misses
nothing (see ops/LEDGER.md).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, LiteralString

from psycopg import sql
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from workers import metrics
from workers.config import Settings
from workers.core.action import Action
from workers.core.parameters import PARAMETERS
from workers.core.redaction import DEVELOPMENT_PII_KEY, pii_digest, redact_params
from workers.core.sids import is_sid
from workers.errors import LedgerError
from workers.ledger.connector import BoundConnection, Connector
from workers.ledger.models import (
    ActionRecord,
    Arrival,
    Checkpoint,
    Cursor,
    EventKind,
    LedgerEvent,
    Outcome,
    OutcomeResult,
    Receipt,
    ReservationState,
    Role,
    TransitionResult,
)
from workers.ledger.queries import QUERIES

logger = logging.getLogger(__name__)

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
_PII_NAMES = tuple(sorted({name for p in PARAMETERS if p.pii for name in (p.wire, p.keyword)}))
_START = Cursor(0, 0)
# How long an action waits for another worker to finish with its reservation (then ReservationBusy).
LOCK_TIMEOUT = 30.0
_PROJECTION_FIELDS = (
    "reservation_sid",
    "workspace_sid",
    "task_sid",
    "worker_sid",
    "status",
    "etag",
    "last_position",
    "updated_at",
)


def resolve_pii_key(configured: str | None) -> str:
    """LEDGER_PII_KEY, or the development key with a warning (the key itself is never logged)."""
    if configured:
        return configured
    logger.warning(
        "LEDGER_PII_KEY is unset: PII is hashed with the public development key;"
        " set LEDGER_PII_KEY in production"
    )
    return DEVELOPMENT_PII_KEY


class Ledger:
    """The repository over one connection pool; safe to share between threads."""

    def __init__(
        self, connector: Connector | BoundConnection, pii_key: str | bytes, *, worker_host: str | None = None
    ) -> None:
        self._connector = connector
        self._pii_key = pii_key
        self._host = worker_host or socket.gethostname()

    @classmethod
    def from_settings(cls, settings: Settings, role: Role = Role.WRITER, **pool: Any) -> Ledger:
        connector = Connector(settings.database_url, role, **pool)
        connector.open()
        return cls(connector, resolve_pii_key(settings.ledger_pii_key))

    def close(self) -> None:
        self._connector.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- serialising the workers ----------------------------------------------------------------

    @contextmanager
    def reservation_lock(self, reservation_sid: str, timeout: float = LOCK_TIMEOUT) -> Iterator[Ledger]:
        """Hold the reservation's advisory lock while an action is applied to it.

        Two workers never act on one reservation at once; races with anyone else are settled by
        If-Match. The lock is session-level, on a pooled connection that the yielded ledger also
        writes through, so an action in flight holds exactly one connection (size the pool to the
        worker's concurrency). If the worker dies, PostgreSQL ends the session and the lock with
        it. Raises :class:`ReservationBusy` after ``timeout`` seconds of waiting.
        """
        params = {"reservation_sid": reservation_sid}
        with self._connector.connection() as conn:
            timeout_ms = f"{max(1, int(timeout * 1000))}ms"
            conn.execute(QUERIES["lock_reservation"], {**params, "timeout": timeout_ms})
            try:
                yield Ledger(BoundConnection(conn), self._pii_key, worker_host=self._host)
            finally:
                conn.execute(QUERIES["unlock_reservation"], params)

    # -- writes ------------------------------------------------------------------------------

    def _one(self, query: str, params: Mapping[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            with self._connector.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                cur.execute(QUERIES[query], params)
                row = cur.fetchone()
        finally:
            metrics.ledger_write(query, started)
        if row is None:  # pragma: no cover - every write query returns one row
            raise LedgerError(f"{query} returned nothing")
        return row

    def _who(self) -> dict[str, Any]:
        return {"worker_host": self._host, "worker_pid": os.getpid()}

    def record_received(self, action: Action) -> Receipt:
        """Register ``action`` (idempotent on ``action_id``) and return its registry entry.

        A second receipt of the same ``action_id`` appends nothing and returns what the
        registry already holds, outcome included, with ``created`` false.
        """
        params = self._received_params(action)
        created = bool(self._one("record_received", params)["created"])
        record = self.action(action.action_id)
        if record is None:  # pragma: no cover - the row was committed just above
            raise LedgerError(f"action {action.action_id} vanished from the registry")
        return Receipt(created, record)

    def receive(self, action: Action) -> Arrival:
        """``record_received`` for the workers' hot path: one round trip that also returns the
        action's outcome if it has settled already, and what the projection holds of its
        reservation."""
        row = self._one("receive", self._received_params(action))
        projected = None
        if row["reservation_sid"] is not None:
            projected = ReservationState(**{name: row[name] for name in _PROJECTION_FIELDS})
        return Arrival(bool(row["created"]), row["outcome"], projected)

    def _received_params(self, action: Action) -> dict[str, Any]:
        return {
            "action_id": action.action_id,
            "action": action.action.value,
            "workspace_sid": action.workspace_sid,
            "reservation_sid": action.reservation_sid,
            "task_sid": action.task_sid,
            "worker_sid": action.worker_sid,
            "params": Jsonb(redact_params(action.params, self._pii_key)),
            "expected_status": action.expected_status.value if action.expected_status else None,
            "not_after": action.not_after,
            "correlation_id": action.correlation_id,
            "producer": action.producer,
            **self._who(),
        }

    def _step(self, kind: EventKind, action_id: uuid.UUID, **fields: Any) -> int:
        params: dict[str, Any] = dict.fromkeys(
            (
                "attempt",
                "http_status",
                "twilio_error_code",
                "twilio_request_id",
                "duration_ms",
                "from_status",
                "to_status",
                "etag_before",
                "etag_after",
                "detail",
            )
        )
        params.update(fields, kind=kind.value, action_id=action_id, **self._who())
        return int(self._one("record_step", params)["position"])

    def record_attempt(
        self,
        action_id: uuid.UUID,
        *,
        attempt: int,
        etag_before: str | None = None,
        http_status: int | None = None,
        twilio_error_code: int | None = None,
        twilio_request_id: str | None = None,
        duration_ms: int | None = None,
        detail: str | None = None,
    ) -> int:
        """One update call to TaskRouter (whatever it answered); returns the row's position."""
        return self._step(
            EventKind.ATTEMPT,
            action_id,
            attempt=attempt,
            etag_before=etag_before,
            http_status=http_status,
            twilio_error_code=twilio_error_code,
            twilio_request_id=twilio_request_id,
            duration_ms=duration_ms,
            detail=detail,
        )

    def record_conflict(
        self,
        action_id: uuid.UUID,
        *,
        attempt: int,
        etag_before: str | None,
        etag_after: str | None = None,
        current_status: str | None = None,
        twilio_error_code: int | None = None,
        twilio_request_id: str | None = None,
        duration_ms: int | None = None,
        detail: str | None = None,
    ) -> int:
        """A 412: ``etag_before`` was stale; ``etag_after``/``current_status`` what a fetch found."""
        return self._step(
            EventKind.CONFLICT,
            action_id,
            attempt=attempt,
            http_status=412,
            etag_before=etag_before,
            etag_after=etag_after,
            to_status=current_status,
            twilio_error_code=twilio_error_code,
            twilio_request_id=twilio_request_id,
            duration_ms=duration_ms,
            detail=detail,
        )

    def record_redrive(self, action_id: uuid.UUID, *, detail: str | None = None) -> int:
        """An operator sends a settled (typically dead-lettered) action round again."""
        return self._step(EventKind.REDRIVE, action_id, detail=detail)

    def record_transition(
        self,
        reservation_sid: str,
        *,
        from_status: str | None,
        to_status: str,
        etag_before: str | None,
        etag_after: str | None,
        action_id: uuid.UUID | None = None,
        outcome: Outcome | None = None,
        workspace_sid: str | None = None,
        task_sid: str | None = None,
        worker_sid: str | None = None,
        attempt: int | None = None,
        http_status: int | None = None,
        twilio_request_id: str | None = None,
        duration_ms: int | None = None,
        detail: str | None = None,
    ) -> TransitionResult:
        """Record a transition, update the projection and settle ``outcome``, atomically.

        Without ``action_id`` it records a change observed but not caused by us (e.g. a
        timeout seen on fetch). The first outcome an action gets is final: a later one is
        ignored and the result reports the first.
        """
        params = {
            "action_id": action_id,
            "reservation_sid": reservation_sid,
            "workspace_sid": workspace_sid,
            "task_sid": task_sid,
            "worker_sid": worker_sid,
            "from_status": from_status,
            "to_status": to_status,
            "etag_before": etag_before,
            "etag_after": etag_after,
            "attempt": attempt,
            "http_status": http_status,
            "twilio_request_id": twilio_request_id,
            "duration_ms": duration_ms,
            "outcome": outcome.value if outcome else None,
            "detail": detail,
            **self._who(),
        }
        return TransitionResult(**self._one("record_transition", params))

    def record_outcome(
        self,
        action_id: uuid.UUID,
        outcome: Outcome,
        *,
        http_status: int | None = None,
        twilio_error_code: int | None = None,
        twilio_request_id: str | None = None,
        detail: str | None = None,
    ) -> OutcomeResult:
        """Settle an action without a transition (the first outcome recorded wins)."""
        params = {
            "action_id": action_id,
            "outcome": outcome.value,
            "http_status": http_status,
            "twilio_error_code": twilio_error_code,
            "twilio_request_id": twilio_request_id,
            "detail": detail,
            **self._who(),
        }
        return OutcomeResult(**self._one("record_outcome", params))

    def record_rejected_input(self, message: Mapping[str, Any] | None, reason: str) -> int:
        """A message that broke the schema: what of it is safe to keep, and why it was refused.

        Its fields are kept only where they have the right shape (a SID where a SID belongs);
        its ``params`` are redacted like any action's, and anything else it carried is hashed.
        """
        message = message if isinstance(message, Mapping) else {}
        action_id = _optional_uuid(message.get("action_id"))
        raw_params = message.get("params")
        params: dict[str, Any] = {}
        if isinstance(raw_params, Mapping):
            params = redact_params(raw_params, self._pii_key)
        elif raw_params is not None:
            params = {"params": pii_digest(raw_params, self._pii_key)}
        known = {
            "schema",
            "action_id",
            "action",
            "workspace_sid",
            "reservation_sid",
            "task_sid",
            "worker_sid",
            "params",
            "correlation_id",
            "producer",
        }
        extra = {key: value for key, value in message.items() if str(key) not in known}
        if extra:
            params["unknown_fields"] = redact_params({str(k): v for k, v in extra.items()}, self._pii_key)
        values = {
            "action_id": action_id,
            "action": _short_text(message.get("action")),
            "workspace_sid": optional_sid(message.get("workspace_sid"), "WS"),
            "reservation_sid": optional_sid(message.get("reservation_sid"), "WR"),
            "task_sid": optional_sid(message.get("task_sid"), "WT"),
            "worker_sid": optional_sid(message.get("worker_sid"), "WK"),
            "params": Jsonb(params),
            "correlation_id": _short_text(message.get("correlation_id")),
            "producer": _short_text(message.get("producer")),
            "detail": reason,
            **self._who(),
        }
        return int(self._one("record_rejected_input", values)["position"])

    def checkpoint(self) -> Checkpoint:
        """Seal the chain heads that moved since the last checkpoint."""
        return Checkpoint(**self._one("seal_checkpoint", {}))

    # -- reads -------------------------------------------------------------------------------

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
        self,
        *,
        reservation_sid: str | None = None,
        task_sid: str | None = None,
        worker_sid: str | None = None,
        workspace_sid: str | None = None,
        action_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        kind: str | None = None,
        outcome: str | None = None,
        twilio_error_code: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        pii_value: str | None = None,
        after: Cursor | None = None,
        limit: int = 1000,
    ) -> list[LedgerEvent]:
        """Ledger rows matching every filter given, in ledger order, after ``after``.

        ``since`` is inclusive and ``until`` exclusive (``recorded_at``, the database clock).
        ``pii_value`` finds the rows whose parameters held that value, through its keyed hash.
        Page with ``after=rows[-1].cursor``.
        """
        query, params = self._history_query(
            reservation_sid=reservation_sid,
            task_sid=task_sid,
            worker_sid=worker_sid,
            workspace_sid=workspace_sid,
            action_id=action_id,
            correlation_id=correlation_id,
            kind=kind,
            outcome=outcome,
            twilio_error_code=twilio_error_code,
            since=since,
            until=until,
            pii_value=pii_value,
            after=after,
            limit=limit,
        )
        with self._connector.connection() as conn, conn.cursor(row_factory=class_row(LedgerEvent)) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    def explain_history(self, **filters: Any) -> dict[str, Any]:
        """The plan PostgreSQL chooses for ``history(**filters)`` (EXPLAIN, JSON; nothing runs)."""
        query, params = self._history_query(**filters)
        with self._connector.connection() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(query), params)
            row = cur.fetchone()
        if row is None:  # pragma: no cover - EXPLAIN always answers
            raise LedgerError("EXPLAIN returned nothing")
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan

    def ping(self) -> None:
        """Raise LedgerError unless the database answers and this role can read the ledger."""
        with self._connector.connection() as conn:
            conn.execute(QUERIES["ping"])

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

    def _history_query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        pii_value: str | None = None,
        after: Cursor | None = None,
        limit: int = 1000,
        **equal: Any,
    ) -> tuple[sql.Composed, dict[str, Any]]:
        unknown = set(equal) - set(HISTORY_COLUMNS)
        if unknown:
            raise TypeError(f"history() got unknown filters: {', '.join(sorted(unknown))}")
        after = after or _START
        params: dict[str, Any] = {
            "after_tx_id": str(after.tx_id),
            "after_position": after.position,
            "limit": limit,
        }
        filters: list[sql.Composable] = []
        for column in HISTORY_COLUMNS:
            if equal.get(column) is not None:
                filters.append(
                    sql.SQL("AND e.{} = {}").format(sql.Identifier(column), sql.Placeholder(column))
                )
                params[column] = equal[column]
        if since is not None:
            filters.append(sql.SQL("AND e.recorded_at >= {}").format(sql.Placeholder("since")))
            params["since"] = since
        if until is not None:
            filters.append(sql.SQL("AND e.recorded_at < {}").format(sql.Placeholder("until")))
            params["until"] = until
        if pii_value is not None:
            digest = pii_digest(pii_value, self._pii_key)
            alternatives = []
            for index, name in enumerate(_PII_NAMES):
                placeholder = f"pii_{index}"
                params[placeholder] = Jsonb({name: digest})
                alternatives.append(sql.SQL("e.params @> {}").format(sql.Placeholder(placeholder)))
            filters.append(sql.SQL("AND ({})").format(sql.SQL(" OR ").join(alternatives)))
        query = sql.SQL(QUERIES["history"]).format(filters=sql.SQL(" ").join(filters))
        return query, params


def _optional_uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _short_text(value: object, limit: int = 200) -> str | None:
    """A plain string field of a rejected message, if it is one, cut to ``limit`` characters."""
    return value[:limit] if isinstance(value, str) else None


def optional_sid(value: object, prefix: str) -> str | None:
    """``value`` if it is a well-formed SID with ``prefix``, else None."""
    return value if isinstance(value, str) and is_sid(value, prefix) else None
