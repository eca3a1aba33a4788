"""Fakes of our own seams (ledger, gateway) for fast unit tests of the applier.

The real implementations run in the integration tests; the fakes follow the same protocols
(``workers.apply.applier.Ledger`` and ``Gateway``) and the same state machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers.core.action import Action
from workers.core.planner import Outcome
from workers.core.state_machine import Status, status_after_client_update, status_after_instruction
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    TransitionRefused,
)
from workers.ledger.models import Arrival, OutcomeResult, ReservationState, TransitionResult
from workers.taskrouter.gateway import ReservationRef
from workers.taskrouter.gateway import ReservationState as Fetched

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass
class FakeLedger:
    """The applier's view of the ledger, in memory: registry, projection, first outcome wins."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    projection: dict[str, ReservationState] = field(default_factory=dict)
    received: set[uuid.UUID] = field(default_factory=set)
    locked: list[str] = field(default_factory=list)

    @contextmanager
    def reservation_lock(self, reservation_sid: str) -> Iterator[FakeLedger]:
        self.locked.append(reservation_sid)
        yield self

    def receive(self, action: Action) -> Arrival:
        created = action.action_id not in self.received
        if created:
            self.received.add(action.action_id)
            self.rows.append(("received", {}))
        outcome = self.outcomes.get(action.action_id)
        return Arrival(
            created, outcome.value if outcome else None, self.projection.get(action.reservation_sid)
        )

    def record_rejected_input(self, message: Mapping[str, Any] | None, reason: str) -> int:
        self.rows.append(("rejected_input", {"detail": reason}))
        return len(self.rows)

    def cache(self, reservation_sid: str, status: Status, etag: str) -> None:
        self.projection[reservation_sid] = ReservationState(
            reservation_sid, None, None, None, status.value, etag, 0, NOW
        )

    def record_attempt(self, action_id: uuid.UUID, **fields: Any) -> int:
        self.rows.append(("attempt", fields))
        return len(self.rows)

    def record_conflict(self, action_id: uuid.UUID, **fields: Any) -> int:
        self.rows.append(("conflict", fields))
        return len(self.rows)

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
        **fields: Any,
    ) -> TransitionResult:
        kind = "transition" if action_id else "observed"
        fields_seen = {"from": from_status, "to": to_status, "before": etag_before, "after": etag_after}
        self.rows.append((kind, {**fields_seen, "action_id": action_id}))
        self.projection[reservation_sid] = ReservationState(
            reservation_sid, None, None, None, to_status, etag_after, len(self.rows), NOW
        )
        settled = self._settle(action_id, outcome) if action_id and outcome else None
        return TransitionResult(len(self.rows), None, settled)

    def record_outcome(self, action_id: uuid.UUID, outcome: Outcome, **fields: Any) -> OutcomeResult:
        self.rows.append(("outcome", {"outcome": outcome, **fields}))
        return OutcomeResult(len(self.rows), self._settle(action_id, outcome))

    def _settle(self, action_id: uuid.UUID, outcome: Outcome) -> str:
        return self.outcomes.setdefault(action_id, outcome).value

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.rows if kind != "received"]


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
    fetches: int = 0
    updates: int = 0

    def _state(self, sid: str) -> Fetched:
        return Fetched(sid, self.status, str(self.version), self.task_sid, self.worker_sid, "RQ1", 200)

    def fetch(self, ref: ReservationRef) -> Fetched:
        self.fetches += 1
        return self._state(ref.reservation_sid)

    def update(self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None) -> Fetched:
        self.updates += 1
        if self.failures:
            raise self.failures.pop(0)
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
        return self._state(ref.reservation_sid)
