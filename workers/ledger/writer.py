"""The ledger's writer over PostgreSQL: what the workers and the intake call (the writer role).

Each write is one transaction and one round trip: it calls a function of the migrations that
takes the chain's lock, appends, and keeps the registry and the projection in step. Reads are
:mod:`workers.ledger.reader`'s (see ops/LEDGER.md).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, overload

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from workers import metrics, tracing
from workers.core.action import Action
from workers.core.redaction import IDENTITY_FIELDS, pii_digest, redact_params
from workers.core.sids import is_sid
from workers.errors import LedgerError
from workers.ledger.connector import BoundConnection, Connector
from workers.ledger.events import (
    Attempt,
    Conflict,
    Intent,
    LedgerEvent,
    Redrive,
    RejectedInput,
    Settle,
    Step,
    Transition,
)
from workers.ledger.models import (
    Arrival,
    EventKind,
    OutcomeResult,
    PendingIntent,
    ReservationState,
    Role,
    TransitionResult,
)
from workers.ledger.pooled import Pooled
from workers.ledger.queries import QUERIES

# How long an action waits for another worker to finish with its reservation (then ReservationBusy).
LOCK_TIMEOUT = 30.0
_STEP_KINDS: dict[type[Step], EventKind] = {
    Attempt: EventKind.ATTEMPT,
    Conflict: EventKind.CONFLICT,
    Redrive: EventKind.REDRIVE,
    Intent: EventKind.INTENT,
}
# The columns of record_step; an event fills those it has, the rest stay NULL.
_STEP_COLUMNS = (
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
    "trace_id",
)
_PROJECTION_FIELDS = tuple(field.name for field in fields(ReservationState))
# The fields of the wire message a rejected input keeps (when well-formed); others are hashed.
_KNOWN_FIELDS = IDENTITY_FIELDS | {"params"}


class PostgresLedgerWriter(Pooled):
    """The :class:`workers.ledger.ports.LedgerWriter` over one connection pool; thread-safe."""

    ROLE = Role.WRITER

    def __init__(
        self, connector: Connector | BoundConnection, pii_key: str | bytes, *, worker_host: str | None = None
    ) -> None:
        super().__init__(connector, pii_key)
        self._host = worker_host or socket.gethostname()

    @contextmanager
    def lock(self, reservation_sid: str, timeout: float = LOCK_TIMEOUT) -> Iterator[PostgresLedgerWriter]:
        """Hold the reservation's advisory lock while an action is applied to it.

        Two workers never act on one reservation at once; races with anyone else are settled by
        If-Match. The lock is session-level, on a pooled connection that the yielded writer also
        writes through, so an action in flight holds exactly one connection (size the pool to the
        worker's concurrency). If the worker dies, PostgreSQL ends the session and the lock with
        it. Raises :class:`ReservationBusy` after ``timeout`` seconds of waiting.
        """
        params = {"reservation_sid": reservation_sid}
        with self._connector.connection() as conn:
            timeout_ms = f"{max(1, int(timeout * 1000))}ms"
            conn.execute(QUERIES["lock_reservation"], {**params, "timeout": timeout_ms})
            try:
                yield PostgresLedgerWriter(BoundConnection(conn), self._pii_key, worker_host=self._host)
            finally:
                if not conn.broken:  # a lost session has released its lock already
                    conn.execute(QUERIES["unlock_reservation"], params)

    def receive(self, action: Action, trace_id: str | None = None) -> Arrival:
        """Register ``action`` (idempotent on ``action_id``) in one round trip that also returns
        its outcome if it has settled already, and what the projection holds of its reservation.
        A second receipt of the same ``action_id`` appends nothing, with ``created`` false.
        ``trace_id`` is the W3C trace id of the work that received it."""
        row = self._one("receive", {**self._received_params(action), "trace_id": trace_id})
        projected = None
        if row["reservation_sid"] is not None:
            projected = ReservationState(**{name: row[name] for name in _PROJECTION_FIELDS})
        intent = None
        if row["intent_at"] is not None:
            intent = PendingIntent(
                row["intent_attempt"],
                row["intent_etag"],
                row["intent_from_status"],
                row["intent_to_status"],
                row["intent_at"],
            )
        return Arrival(bool(row["created"]), row["outcome"], projected, intent)

    @overload
    def append(self, event: Transition) -> TransitionResult: ...
    @overload
    def append(self, event: Settle) -> OutcomeResult: ...
    @overload
    def append(self, event: Attempt | Conflict | RejectedInput | Redrive | Intent) -> int: ...

    def append(self, event: LedgerEvent) -> int | TransitionResult | OutcomeResult:
        """Append ``event``: a step or a rejected input returns its row's position; a transition
        or a settlement returns which outcome won (the first an action gets is final)."""
        if isinstance(event, Transition):
            return TransitionResult(**self._one("record_transition", self._transition_params(event)))
        if isinstance(event, Settle):
            params = {**_columns(event), "outcome": event.outcome.value, **self._who()}
            return OutcomeResult(**self._one("record_outcome", params))
        if isinstance(event, RejectedInput):
            return int(self._one("record_rejected_input", self._rejected_params(event))["position"])
        params = dict.fromkeys(_STEP_COLUMNS)
        params.update(_columns(event), kind=_STEP_KINDS[type(event)].value, **self._who())
        if isinstance(event, Conflict):
            params["http_status"] = 412
        if isinstance(event, Intent):  # the arguments may hold PII: only their keyed digest is kept
            params["detail"] = f"arguments {pii_digest(dict(params.pop('arguments')), self._pii_key)}"
        return int(self._one("record_step", params)["position"])

    def append_transitions(self, events: Sequence[Transition]) -> list[TransitionResult]:
        """Append ``events`` in one transaction, each as :meth:`append` would, sent in one round
        trip (psycopg pipelines ``executemany``): one commit, one WAL flush for the lot (the
        events API's group commit). The calls run in reservation order, so two batches take
        their chains' locks in the same order and never wait on each other in a cycle. All or
        nothing: an error rolls the whole batch back. The results are in the order given."""
        order = sorted(range(len(events)), key=lambda index: events[index].reservation_sid)
        results: list[TransitionResult | None] = [None] * len(events)
        started = time.perf_counter()
        try:
            with (
                self._connector.connection() as conn,
                conn.transaction(),
                conn.cursor(row_factory=dict_row) as cur,
            ):
                params = [self._transition_params(events[index]) for index in order]
                cur.executemany(QUERIES["record_transition"], params, returning=True)
                for index in order:
                    row = cur.fetchone()
                    if row is None:  # pragma: no cover - record_transition returns one row
                        raise LedgerError("record_transition returned nothing")
                    results[index] = TransitionResult(**row)
                    cur.nextset()
        finally:
            metrics.ledger_write("record_transition", started)  # a batch: one observation
        return [result for result in results if result is not None]

    def _transition_params(self, event: Transition) -> dict[str, Any]:
        outcome = event.outcome.value if event.outcome else None
        source = event.source.value if event.source else None
        return {**_columns(event), "outcome": outcome, "source": source, **self._who()}

    def _one(self, query: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run one write; a row that names no trace gets the current one's (workers.tracing: when
        tracing is on, the trace of the intake or the apply task that writes it)."""
        if "trace_id" in params and params["trace_id"] is None and tracing.enabled():
            params = {**params, "trace_id": tracing.trace_id()}
        started = time.perf_counter()
        try:
            with (
                tracing.client(
                    f"ledger {query}", {"db.system.name": "postgresql", "db.operation.name": query}
                ),
                self._connector.connection() as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                cur.execute(QUERIES[query], params)
                row = cur.fetchone()
        finally:
            metrics.ledger_write(query, started)
        if row is None:  # pragma: no cover - every write query returns one row
            raise LedgerError(f"{query} returned nothing")
        return row

    def _who(self) -> dict[str, Any]:
        return {"worker_host": self._host, "worker_pid": os.getpid()}

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

    def _rejected_params(self, event: RejectedInput) -> dict[str, Any]:
        """What of a rejected message is safe to keep: its fields only where they have the right
        shape (a SID where a SID belongs), its ``params`` redacted like any action's, and
        anything else it carried hashed."""
        message = event.message if isinstance(event.message, Mapping) else {}
        raw_params = message.get("params")
        params: dict[str, Any] = {}
        if isinstance(raw_params, Mapping):
            params = redact_params(raw_params, self._pii_key)
        elif raw_params is not None:
            params = {"params": pii_digest(raw_params, self._pii_key)}
        extra = {str(key): value for key, value in message.items() if str(key) not in _KNOWN_FIELDS}
        if extra:
            params["unknown_fields"] = redact_params(extra, self._pii_key)
        return {
            "action_id": _optional_uuid(message.get("action_id")),
            "action": _short_text(message.get("action")),
            "workspace_sid": optional_sid(message.get("workspace_sid"), "WS"),
            "reservation_sid": optional_sid(message.get("reservation_sid"), "WR"),
            "task_sid": optional_sid(message.get("task_sid"), "WT"),
            "worker_sid": optional_sid(message.get("worker_sid"), "WK"),
            "params": Jsonb(params),
            "correlation_id": _short_text(message.get("correlation_id")),
            "producer": _short_text(message.get("producer")),
            "detail": event.detail,
            "trace_id": event.trace_id,
            **self._who(),
        }


def _columns(event: LedgerEvent) -> dict[str, Any]:
    return {field.name: getattr(event, field.name) for field in fields(event)}


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
