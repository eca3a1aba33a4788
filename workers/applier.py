"""Apply one action to TaskRouter with the If-Match protocol (design doc, steps 1 to 6).

The composition of the three seams: the pure planner decides, the gateway talks to TaskRouter,
the ledger remembers. No Celery here: the task in ``workers.tasks`` is a thin adapter that turns
:class:`RetryLater` into a Celery retry and a dead-lettered outcome into a dead-letter message.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from workers.core.action import Action
from workers.core.planner import Finish, Outcome, Send, Wait, plan, target_status
from workers.core.retry import RetryPolicy
from workers.core.state_machine import Status
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    TransientTaskRouterError,
)
from workers.taskrouter.gateway import ReservationRef, ReservationState


@dataclass(frozen=True, slots=True)
class CachedReservation:
    """What the ledger last saw of a reservation."""

    status: Status
    etag: str | None


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP exchange with TaskRouter, as the ledger records it."""

    attempt: int
    http_status: int | None
    error_code: int | None
    request_id: str | None
    duration_ms: float


class Gateway(Protocol):
    def fetch(self, ref: ReservationRef) -> ReservationState: ...

    def update(
        self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None
    ) -> ReservationState: ...


class Ledger(Protocol):
    """What the applier needs of the ledger; the PostgreSQL ledger implements it."""

    def reservation_lock(self, reservation_sid: str) -> AbstractContextManager[None]:
        """Serialise work on one reservation across all workers (held for the attempt)."""

    def outcome_of(self, action_id: uuid.UUID) -> Outcome | None: ...

    def cached_reservation(self, reservation_sid: str) -> CachedReservation | None: ...

    def record_attempt(self, action: Action, call: Call, etag_before: str | None) -> None: ...

    def record_conflict(self, action: Action, call: Call, etag_before: str | None) -> None: ...

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
        """Record the transition, move the projection and settle the outcome, in one transaction."""

    def record_outcome(
        self, action: Action, outcome: Outcome, reason: str, call: Call | None = None
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Done:
    outcome: Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Try again after ``delay`` seconds; ``fetch_first`` when our last update may have landed."""

    delay: float
    reason: str
    fetch_first: bool


Result = Done | RetryLater


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where this run stands among the action's runs (Celery's retry count)."""

    retries: int = 0
    fetch_first: bool = False


class ActionApplier:
    def __init__(
        self,
        ledger: Ledger,
        gateway: Gateway,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._ledger = ledger
        self._gateway = gateway
        self._policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep

    def apply(self, action: Action, delivery: Delivery = Delivery()) -> Result:
        with self._ledger.reservation_lock(action.reservation_sid):
            known = self._ledger.outcome_of(action.action_id)
            if known is not None:
                return Done(known, "already settled: a redelivery or a duplicate action_id")
            return self._apply_locked(action, delivery)

    def _apply_locked(self, action: Action, delivery: Delivery) -> Result:
        ref = ReservationRef.of(action)
        attempt = delivery.retries + 1
        conflicts = 0
        try:
            state = self._starting_state(action, ref, delivery, attempt)
            while True:
                decision = plan(action, state.status, self._clock())
                if not isinstance(decision, Send) and state.from_cache:
                    # The cache may only save a fetch; a verdict of "nothing to send" needs the truth.
                    state = self._fetch(ref, attempt)
                    continue
                if isinstance(decision, Finish):
                    self._ledger.record_outcome(action, decision.outcome, decision.reason)
                    return Done(decision.outcome, decision.reason)
                if isinstance(decision, Wait):
                    return self._later(action, delivery, decision.reason, fetch_first=True)
                try:
                    state = self._send(action, ref, decision, state, attempt)
                    return Done(Outcome.APPLIED, "applied")
                except PreconditionFailed:
                    pause = self._policy.conflict_pause(conflicts, self._rng)
                    conflicts += 1
                    if pause is None:
                        return self._later(action, delivery, "412 conflicts kept coming", fetch_first=True)
                    self._sleep(pause)
                    state = self._fetch(ref, attempt)
        except PermanentTaskRouterError as exc:
            return self._permanent(action, ref, exc, attempt)
        except TransientTaskRouterError as exc:
            return self._later(action, delivery, str(exc), fetch_first=True, retry_after=exc.retry_after)

    def _starting_state(
        self, action: Action, ref: ReservationRef, delivery: Delivery, attempt: int
    ) -> _Known:
        if not delivery.fetch_first:
            cached = self._ledger.cached_reservation(action.reservation_sid)
            if cached is not None and cached.etag is not None:
                return _Known(cached.status, cached.etag, from_cache=True)
        return self._fetch(ref, attempt)

    def _fetch(self, ref: ReservationRef, attempt: int) -> _Known:
        fetched = self._gateway.fetch(ref)
        return _Known(fetched.status, fetched.etag, from_cache=False)

    def _send(
        self, action: Action, ref: ReservationRef, decision: Send, state: _Known, attempt: int
    ) -> _Known:
        started = time.perf_counter()
        try:
            updated = self._gateway.update(ref, decision.arguments, if_match=state.etag)
        except TaskRouterError as exc:
            call = _call(attempt, started, exc.status, exc.code, exc.request_id)
            if isinstance(exc, PreconditionFailed):
                self._ledger.record_conflict(action, call, state.etag)
            else:
                self._ledger.record_attempt(action, call, state.etag)
            raise
        call = _call(attempt, started, updated.http_status, None, updated.request_id)
        self._ledger.record_transition(
            action, call, state.status, updated.status, state.etag, updated.etag, Outcome.APPLIED
        )
        return _Known(updated.status, updated.etag, from_cache=False)

    def _permanent(
        self, action: Action, ref: ReservationRef, exc: PermanentTaskRouterError, attempt: int
    ) -> Result:
        call = Call(attempt, exc.status, exc.code, exc.request_id, 0.0)
        target = target_status(action)
        if exc.status == 400 and target is not None:
            # A 400 can mean our earlier, timed-out update did land: look before calling it failed.
            try:
                current = self._gateway.fetch(ref)
            except TaskRouterError:
                current = None
            if current is not None and current.status is target:
                reason = f"TaskRouter refused the update ({exc}), but the reservation is already {target}"
                self._ledger.record_outcome(action, Outcome.ALREADY_APPLIED, reason, call)
                return Done(Outcome.ALREADY_APPLIED, reason)
        self._ledger.record_outcome(action, Outcome.FAILED, str(exc), call)
        return Done(Outcome.FAILED, str(exc))

    def _later(
        self,
        action: Action,
        delivery: Delivery,
        reason: str,
        *,
        fetch_first: bool,
        retry_after: float | None = None,
    ) -> Result:
        delay = self._policy.delay(delivery.retries, self._rng, retry_after)
        if delay is None:
            final = f"retries exhausted after {delivery.retries + 1} runs: {reason}"
            self._ledger.record_outcome(action, Outcome.DEAD_LETTERED, final)
            return Done(Outcome.DEAD_LETTERED, final)
        return RetryLater(delay, reason, fetch_first)


@dataclass(frozen=True, slots=True)
class _Known:
    status: Status
    etag: str | None
    from_cache: bool


def _call(attempt: int, started: float, status: int | None, code: int | None, request_id: str | None) -> Call:
    return Call(attempt, status, code, request_id, (time.perf_counter() - started) * 1000)
