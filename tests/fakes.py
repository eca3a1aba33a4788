"""Fakes of our own seams (ledger, gateway) for fast unit tests of the applier.

The fakes follow the same protocols (``workers.ledger.ports.LedgerWriter`` and
``workers.apply.applier.Gateway``) and the same state machine; the contract suites in tests/contracts/
run the same tests against each fake and its real implementation.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, overload

from workers.core.action import Action
from workers.core.planner import Outcome
from workers.core.state_machine import (
    Status,
    status_after_client_update,
    status_after_instruction,
    status_rank,
)
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    TransientTaskRouterError,
    TransitionRefused,
    UnknownAction,
)
from workers.ledger.events import (
    Attempt,
    Conflict,
    Intent,
    LedgerEvent,
    Redrive,
    RejectedInput,
    Settle,
    Transition,
)
from workers.ledger.models import (
    Arrival,
    OutcomeResult,
    PendingIntent,
    ReservationState,
    Source,
    TransitionResult,
)
from workers.taskrouter.gateway import FetchedReservation, ReservationRef

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass
class FakeLedgerWriter:
    """The ledger writer port (``workers.ledger.ports.LedgerWriter``) in memory: a registry, the
    projection, the first outcome wins, and a lock per reservation. ``rows`` holds every event
    appended, in order; tests/contracts/test_ledger_writer.py keeps it in step with PostgreSQL."""

    rows: list[LedgerEvent] = field(default_factory=list)
    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    intents: dict[uuid.UUID, PendingIntent] = field(default_factory=dict)
    redrives: dict[uuid.UUID, int] = field(default_factory=dict)
    projection: dict[str, ReservationState] = field(default_factory=dict)
    transitions: list[tuple[int, Transition]] = field(default_factory=list)
    received: set[uuid.UUID] = field(default_factory=set)
    locked: list[str] = field(default_factory=list)
    position: int = 0
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def lock(self, reservation_sid: str) -> Iterator[FakeLedgerWriter]:
        with self._guard:
            lock = self._locks.setdefault(reservation_sid, threading.Lock())
        with lock:
            self.locked.append(reservation_sid)
            yield self

    def receive(self, action: Action, trace_id: str | None = None) -> Arrival:
        with self._guard:
            created = action.action_id not in self.received
            if created:
                self.received.add(action.action_id)
                self._next()
            outcome = self.outcomes.get(action.action_id)
            projected = self.projection.get(action.reservation_sid)
            intent = self.intents.get(action.action_id)
        return Arrival(created, outcome.value if outcome else None, projected, intent)

    def cache(self, reservation_sid: str, status: Status, etag: str) -> None:
        """Give the projection a reservation, as if an earlier run had recorded it."""
        self.projection[reservation_sid] = ReservationState(
            reservation_sid, None, None, None, status.value, etag, 0, NOW
        )

    @overload
    def append(self, event: Transition) -> TransitionResult: ...
    @overload
    def append(self, event: Settle) -> OutcomeResult: ...
    @overload
    def append(self, event: Attempt | Conflict | RejectedInput | Redrive | Intent) -> int: ...

    def append(self, event: LedgerEvent) -> int | TransitionResult | OutcomeResult:
        with self._guard:
            action_id = getattr(event, "action_id", None)
            if action_id is not None and not isinstance(event, RejectedInput):
                self._known(action_id)
            if isinstance(event, Transition):
                return self._transition(event)
            self.rows.append(event)
            self._follow_intent(event)
            if isinstance(event, Settle):
                return OutcomeResult(*self._settle(event.action_id, event.outcome))
            if isinstance(event, Redrive):
                self.redrives[event.action_id] = self.redrives.get(event.action_id, 0) + 1
            return self._next()

    def _transition(self, event: Transition) -> TransitionResult:
        """As ``ledger.record_transition``: one row per transition when an event is involved, and
        a projection that never moves backwards (``status_rank``)."""
        source = event.source or (Source.ACTION if event.action_id else Source.FETCH)
        held = next(
            (
                position
                for position, row in self.transitions
                if row.reservation_sid == event.reservation_sid
                and row.to_status == event.to_status
                and Source.EVENT in (source, row.source)
            ),
            None,
        )
        appended = held is None
        if held is None:
            event = replace(event, source=source)
            self.rows.append(event)
            held = self._next()
            self.transitions.append((held, event))
            reached = self.projection.get(event.reservation_sid)
            if reached is None or status_rank(event.to_status) >= status_rank(reached.status):
                self.projection[event.reservation_sid] = ReservationState(
                    event.reservation_sid,
                    event.workspace_sid,
                    event.task_sid,
                    event.worker_sid,
                    event.to_status,
                    event.etag_after,
                    held,
                    NOW,
                )
        self._follow_intent(event)
        if event.action_id is None or event.outcome is None:
            return TransitionResult(held, None, None, appended)
        # A transition appended now settles its action in its own row (migration 0013).
        return TransitionResult(
            held, *self._settle(event.action_id, event.outcome, held if appended else None), appended
        )

    def _follow_intent(self, event: LedgerEvent) -> None:
        """An intent waits for a definite answer: a transition of the action, a 412, a 4xx, an
        outcome or a redrive (as ``ledger.pending_intent`` reads it)."""
        if isinstance(event, Intent):
            self.intents[event.action_id] = PendingIntent(
                event.attempt, event.etag_before, event.from_status, event.to_status, NOW
            )
        elif (
            isinstance(event, Conflict | Settle | Redrive)
            or (isinstance(event, Transition) and event.action_id is not None)
            or (
                isinstance(event, Attempt)
                and event.http_status is not None
                and (400 <= event.http_status < 500 or event.http_status == 503)
            )
        ):
            self.intents.pop(event.action_id, None)  # type: ignore[arg-type]

    def kinds(self) -> list[str]:
        """The ledger's words for the rows (a transition without an action: ``observed``)."""
        return [_kind(event) for event in self.rows]

    def _next(self) -> int:
        self.position += 1
        return self.position

    def _known(self, action_id: uuid.UUID) -> None:
        if action_id not in self.received:
            raise UnknownAction(str(action_id))

    def _settle(
        self, action_id: uuid.UUID, outcome: Outcome, row: int | None = None
    ) -> tuple[int | None, str]:
        """The outcome's position (None when the action had settled already) and the winner:
        ``row`` when that row carries it, else a row of its own."""
        if action_id in self.outcomes:
            return None, self.outcomes[action_id].value
        self.outcomes[action_id] = outcome
        return (self._next() if row is None else row), outcome.value


def _kind(event: LedgerEvent) -> str:
    if isinstance(event, Transition):
        return "transition" if event.action_id else "observed"
    return {
        Attempt: "attempt",
        Conflict: "conflict",
        Settle: "outcome",
        RejectedInput: "rejected_input",
        Redrive: "redrive",
        Intent: "intent",
    }[type(event)]


@dataclass
class FakeGateway:
    """One reservation in memory, with TaskRouter's versioning and a queue of injected failures."""

    status: Status = Status.PENDING
    version: int = 0
    task_sid: str = "WT" + "2" * 32
    worker_sid: str = "WK" + "5" * 32
    failures: list[TaskRouterError] = field(default_factory=list)
    # Changes "another agent" makes right before our next update lands (a 412 each).
    interference: int = 0
    # Updates whose answer is lost after they landed (the connection drops on the way back).
    lost_answers: int = 0
    fetches: int = 0
    updates: int = 0
    # The SID of the one reservation it holds (any other is a 404); None answers for any SID.
    reservation_sid: str | None = None

    def _state(self, sid: str) -> FetchedReservation:
        return FetchedReservation(
            sid, self.status, str(self.version), self.task_sid, self.worker_sid, "RQ1", 200
        )

    def fetch(self, ref: ReservationRef) -> FetchedReservation:
        self.fetches += 1
        self._find(ref)
        return self._state(ref.reservation_sid)

    def update(
        self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None
    ) -> FetchedReservation:
        self.updates += 1
        if self.failures:
            raise self.failures.pop(0)
        self._find(ref)
        if self.interference:
            self.interference -= 1
            self.version += 1
        if if_match is not None and if_match != str(self.version):
            raise PreconditionFailed("HTTP 412: Precondition Failed", 412, 20412, "RQ412")
        try:
            if "instruction" in arguments:
                accept = bool(arguments.get("call_accept") or arguments.get("redirect_accept"))
                self.status = status_after_instruction(
                    ref.reservation_sid, self.status, str(arguments["instruction"]), accept
                )
            else:
                requested = Status(arguments["reservation_status"])
                self.status = status_after_client_update(ref.reservation_sid, self.status, requested)
        except TransitionRefused as exc:
            raise PermanentTaskRouterError(f"HTTP 400: {exc}", 400, 20001, "RQ400") from exc
        self.version += 1
        if self.lost_answers:
            self.lost_answers -= 1
            raise TransientTaskRouterError("the connection dropped before TaskRouter answered")
        return self._state(ref.reservation_sid)

    def _find(self, ref: ReservationRef) -> None:
        if self.reservation_sid is not None and ref.reservation_sid != self.reservation_sid:
            raise PermanentTaskRouterError(
                f"HTTP 404: The requested resource {ref.reservation_sid} was not found", 404, 20404, "RQ404"
            )
