"""Fakes of our own seams (ledger, gateway) for fast unit tests of the applier.

The real implementations run in the integration tests; the fakes follow the same protocols
(``workers.applier.Ledger`` and ``Gateway``) and the same state machine.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from workers.applier import CachedReservation, Call
from workers.core.action import Action
from workers.core.planner import Outcome
from workers.core.state_machine import Status, status_after_client_update, status_after_instruction
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    TransitionRefused,
)
from workers.taskrouter.gateway import ReservationRef, ReservationState


@dataclass
class FakeLedger:
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    cache: dict[str, CachedReservation] = field(default_factory=dict)
    locked: list[str] = field(default_factory=list)

    @contextmanager
    def reservation_lock(self, reservation_sid: str) -> Iterator[None]:
        self.locked.append(reservation_sid)
        yield

    def outcome_of(self, action_id: uuid.UUID) -> Outcome | None:
        return self.outcomes.get(action_id)

    def cached_reservation(self, reservation_sid: str) -> CachedReservation | None:
        return self.cache.get(reservation_sid)

    def record_attempt(self, action: Action, call: Call, etag_before: str | None) -> None:
        self.rows.append(("attempt", {"call": call, "etag_before": etag_before}))

    def record_conflict(self, action: Action, call: Call, etag_before: str | None) -> None:
        self.rows.append(("conflict", {"call": call, "etag_before": etag_before}))

    def record_transition(
        self,
        action: Action,
        call: Call,
        from_status: Status,
        to_status: Status,
        etag_before: str | None,
        etag_after: str | None,
        outcome: Outcome,
    ) -> None:
        self.rows.append(
            ("transition", {"from": from_status, "to": to_status, "before": etag_before, "after": etag_after})
        )
        self.cache[action.reservation_sid] = CachedReservation(to_status, etag_after)
        self._settle(action, outcome)

    def record_outcome(self, action: Action, outcome: Outcome, reason: str, call: Call | None = None) -> None:
        self.rows.append(("outcome", {"outcome": outcome, "reason": reason}))
        self._settle(action, outcome)

    def _settle(self, action: Action, outcome: Outcome) -> None:
        assert action.action_id not in self.outcomes, "an action settles once"
        self.outcomes[action.action_id] = outcome
        self.rows.append(("settled", {"outcome": outcome}))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.rows]


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

    def _state(self, sid: str) -> ReservationState:
        return ReservationState(
            sid, self.status, str(self.version), self.task_sid, self.worker_sid, "RQ1", 200
        )

    def fetch(self, ref: ReservationRef) -> ReservationState:
        self.fetches += 1
        return self._state(ref.reservation_sid)

    def update(
        self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None
    ) -> ReservationState:
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
