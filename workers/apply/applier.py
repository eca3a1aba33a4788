"""Apply one action to TaskRouter with the If-Match protocol (design doc, steps 1 to 6).

The composition of the three seams: the pure planner decides, the gateway talks to TaskRouter,
the ledger remembers. Every decision of a run is in its :data:`Result`, including what to do with a
malformed message and with a failing ledger. No Celery here: the task in ``workers.apply.task``
is a thin adapter that turns :class:`RetryLater` into a Celery retry and a result that keeps its
message into a dead-letter message.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, overload

from workers import metrics
from workers.core.action import Action
from workers.core.planner import (
    Confirmed,
    Finish,
    Outcome,
    Resend,
    Send,
    Wait,
    plan,
    resolve_lost_answer,
    target_status,
)
from workers.core.retry import RetryPolicy
from workers.core.state_machine import Status
from workers.core.validation import Accepted, readable, validate_message
from workers.errors import (
    LedgerError,
    LedgerPermissionDenied,
    LedgerUnavailable,
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    TransientTaskRouterError,
)
from workers.ledger.events import Attempt, Conflict, Intent, RejectedInput, Settle, Transition
from workers.ledger.models import PendingIntent, ReservationState, Source, TransitionResult
from workers.ledger.ports import LedgerWriter
from workers.taskrouter.gateway import FetchedReservation, ReservationRef

logger = logging.getLogger("workers.apply")


class Gateway(Protocol):
    """What the applier asks of TaskRouter: :class:`workers.taskrouter.gateway.TaskRouterGateway`
    over HTTP, ``tests.fakes.FakeGateway`` in memory (one contract suite runs against both)."""

    def fetch(self, ref: ReservationRef) -> FetchedReservation: ...

    def update(
        self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None
    ) -> FetchedReservation: ...


# Outcomes whose message goes to reservations.dead: the ledger keeps PII only as keyed hashes,
# so the dead-letter queue is where an operator finds the whole message to redrive.
KEPT_FOR_REDRIVE = frozenset(
    {Outcome.DEAD_LETTERED, Outcome.FAILED, Outcome.REJECTED_INPUT, Outcome.INDETERMINATE}
)


@dataclass(frozen=True, slots=True)
class Done:
    outcome: Outcome
    reason: str
    # Settled by an earlier run or copy: its dead letter, if it keeps one, went out then.
    repeat: bool = False

    @property
    def keeps_message(self) -> bool:
        """The message goes to ``reservations.dead``, for an operator to read or redrive."""
        return self.outcome in KEPT_FOR_REDRIVE


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Try again after ``delay`` seconds (the next run starts from a fresh fetch)."""

    delay: float
    reason: str


Result = Done | RetryLater


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where this run stands among the action's runs: Celery's retry count, and whether the
    broker redelivered the message (a worker died holding it)."""

    retries: int = 0
    redelivered: bool = False

    @property
    def fetch_first(self) -> bool:
        """After a failure or a crash our update may have landed: trust no cached ETag."""
        return self.retries > 0 or self.redelivered


@dataclass(frozen=True, slots=True)
class _Known:
    """The reservation as we believe it is, and whether that belief came from the ledger's cache."""

    status: Status
    etag: str | None
    from_cache: bool


class ActionApplier:
    def __init__(
        self,
        ledger: LedgerWriter,
        gateway: Gateway,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ledger = ledger
        self.gateway = gateway
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()
        self.clock = clock
        self.sleep = sleep

    def apply_message(self, message: Mapping[str, Any], delivery: Delivery = Delivery()) -> Result:
        """Apply one wire message; never raises but for a deployment error (a missing privilege).

        A message the intake would have refused (a producer that bypassed it) settles as
        ``rejected_input``; a ledger that fails (down, or the reservation busy) means nothing was
        decided: try again later, within the retry policy's bound.
        """
        # The same schema as the intake's: a message published straight to the apply queue (by
        # anyone with broker credentials) is refused like any bad input.
        fate = validate_message(dict(message)) if isinstance(message, Mapping) else None
        if isinstance(fate, Accepted):
            return self.apply_valid(fate.action, delivery)
        reason = fate.text if fate is not None else "not_an_object: the argument is not an object"

        def refuse() -> Result:
            self.ledger.append(
                RejectedInput(readable(message) if isinstance(message, Mapping) else None, reason)
            )
            return Done(Outcome.REJECTED_INPUT, reason)

        return self._guarded(refuse, delivery, _action_id(message))

    def apply_valid(self, action: Action, delivery: Delivery = Delivery()) -> Result:
        """:meth:`apply_message` for an action its caller validated already (the intake did)."""
        return self._guarded(lambda: self.apply(action, delivery), delivery, action.action_id)

    def _guarded(self, run: Callable[[], Result], delivery: Delivery, action_id: uuid.UUID | None) -> Result:
        """``run()``, with every error but a deployment error turned into a retry or an outcome."""
        try:
            return run()
        except LedgerPermissionDenied:
            metrics.LEDGER_ERRORS.inc()
            raise  # a deployment error: the task stops this worker, never loops on it
        except LedgerError as exc:
            metrics.LEDGER_ERRORS.inc()
            return self._unsettled(delivery, f"the ledger failed: {exc}", action_id)
        except Exception as exc:
            # Anything else a run can raise (a time limit, an answer TaskRouter should not give,
            # a bug): the action has no outcome yet, so it is tried again within the policy's
            # bound, never acknowledged away.
            logger.exception("action %s: the run failed unexpectedly", action_id)
            reason = f"the run failed: {type(exc).__name__}: {exc}"
            return self._unsettled(delivery, reason, action_id)

    def _unsettled(self, delivery: Delivery, reason: str, action_id: uuid.UUID | None) -> Result:
        """Nothing was decided: try again later, or give up as ``dead_lettered`` past the bound."""
        delay = self.policy.delay(delivery.retries, self.rng)
        if delay is not None:
            return RetryLater(delay, reason)
        return self._dead_lettered(
            action_id, f"retries exhausted after {delivery.retries + 1} runs: {reason}"
        )

    def give_up(self, message: Mapping[str, Any], reason: str) -> Done:
        """End an action whose message keeps coming back without an outcome (its runs die with
        their worker): ``dead_lettered`` now, before RabbitMQ would dead-letter it raw."""
        return self._dead_lettered(_action_id(message), reason)

    def _dead_lettered(self, action_id: uuid.UUID | None, reason: str) -> Done:
        """``dead_lettered``, recorded if the ledger takes it now (else the dead letter carries it,
        and a pending intent in the ledger still tells redrive an update may have landed)."""
        if action_id is not None:
            try:
                settled = self.ledger.append(Settle(action_id, Outcome.DEAD_LETTERED, detail=reason))
            except LedgerError:  # down still, or it never received the action (UnknownAction)
                logger.warning("action %s: its dead_lettered outcome could not be recorded", action_id)
            else:
                return _kept(Outcome.DEAD_LETTERED, reason, settled.outcome)
        return Done(Outcome.DEAD_LETTERED, reason)

    def apply(self, action: Action, delivery: Delivery = Delivery()) -> Result:
        with self.ledger.lock(action.reservation_sid) as ledger:
            arrival = ledger.receive(action)
            if arrival.outcome is not None:
                return Done(
                    Outcome(arrival.outcome), "already settled: a redelivery or a duplicate", repeat=True
                )
            run = _Run(self, ledger, action, delivery, arrival.reservation)
            return run.apply(arrival.intent)


class _Run:
    """One run of one action: the loop of step 2 to 4, with what it has learnt so far."""

    def __init__(
        self,
        applier: ActionApplier,
        ledger: LedgerWriter,
        action: Action,
        delivery: Delivery,
        projected: ReservationState | None,
    ) -> None:
        self.ledger = ledger  # the locked one: every write of the run goes through its connection
        self.unlocked = applier.ledger  # the pool, for an answer whose locked connection died
        self.gateway = applier.gateway
        self.policy = applier.policy
        self.rng = applier.rng
        self.clock = applier.clock
        self.sleep = applier.sleep
        self.action = action
        self.delivery = delivery
        self.ref = ReservationRef.of(action)
        self.attempt = delivery.retries + 1
        self.projected = projected

    def apply(self, intent: PendingIntent | None = None) -> Result:
        conflicts = 0
        try:
            if intent is None:
                known = self._starting_point()
            else:  # an earlier update's answer was lost: never send blindly
                resolved = self._resolve(intent)
                if not isinstance(resolved, _Known):
                    return resolved
                known = resolved
            while True:
                decision = plan(self.action, known.status, self.clock())
                if not isinstance(decision, Send) and known.from_cache:
                    # The cache may only ever save a fetch; "nothing to send" needs the truth.
                    known = self._fetch()
                    continue
                if isinstance(decision, Finish):
                    return self._finish(decision.outcome, decision.reason)
                if isinstance(decision, Wait):
                    return self._later(decision.reason)
                try:
                    return _kept(Outcome.APPLIED, "applied", self._send(decision, known).outcome)
                except PreconditionFailed as conflict:
                    fresh = self._after_conflict(conflict, known, conflicts)
                    conflicts += 1
                    if fresh is None:
                        return self._later("412 conflicts kept coming")
                    known = fresh
        except PermanentTaskRouterError as exc:
            return self._permanent(exc)
        except TransientTaskRouterError as exc:
            return self._later(str(exc), retry_after=exc.retry_after)

    def _resolve(self, intent: PendingIntent) -> _Known | Result:
        """Decide what the update behind ``intent`` did, from the reservation as it is now.

        Not before it can no longer land: a run whose connection (and lock) died may still have
        it on the wire, and a resend with its ETag would then meet a 412 that looks like anyone's.
        """
        in_flight = self.policy.in_flight - (self.clock() - intent.recorded_at).total_seconds()
        if in_flight > 0:
            return RetryLater(in_flight, "an update of an earlier run may still be on its way")
        fetched = self.gateway.fetch(self.ref)
        resolution = resolve_lost_answer(
            self.action,
            sent_etag=intent.etag_before,
            sent_from=Status(intent.from_status) if intent.from_status else None,
            current_etag=fetched.etag,
            current=fetched.status,
        )
        if isinstance(resolution, Resend):
            self._observe(fetched)
            return _Known(fetched.status, fetched.etag, from_cache=False)
        if isinstance(resolution, Confirmed):
            recorded = self.ledger.append(
                self._transition(
                    intent.from_status,
                    intent.etag_before,
                    fetched,
                    intent.attempt,
                    detail=resolution.reason,
                    source=Source.FETCH,
                )
            )
            return _kept(Outcome.APPLIED, resolution.reason, recorded.outcome)
        self._observe(fetched, detail="observed on fetch after a lost answer: ours or someone else's")
        sent_at = intent.recorded_at.isoformat(timespec="milliseconds")
        return self._finish(
            Outcome.INDETERMINATE, f"{resolution.reason}; intent of run {intent.attempt} at {sent_at}"
        )

    def _starting_point(self) -> _Known:
        if not self.delivery.fetch_first and self.projected is not None and self.projected.etag is not None:
            return _Known(Status(self.projected.status), self.projected.etag, from_cache=True)
        return self._fetch()

    def _fetch(self) -> _Known:
        fetched = self.gateway.fetch(self.ref)
        self._observe(fetched)
        return _Known(fetched.status, fetched.etag, from_cache=False)

    def _observe(self, fetched: FetchedReservation, detail: str | None = None) -> None:
        """Keep the ledger's picture of the reservation complete.

        A reservation seen for the first time is recorded as such (from no status), so that any
        later change, even one made by an update of ours whose answer a crash swallowed, shows
        up as a transition observed on the next fetch.
        """
        projected = self.projected
        if projected is not None and projected.status == fetched.status.value:
            return
        if projected is None:
            detail = "first seen on fetch"
        elif detail is None:
            detail = "observed on fetch: changed outside this run"
        recorded = self.ledger.append(
            Transition(
                self.action.reservation_sid,
                from_status=projected.status if projected else None,
                to_status=fetched.status.value,
                etag_before=projected.etag if projected else None,
                etag_after=fetched.etag,
                workspace_sid=self.action.workspace_sid,
                task_sid=fetched.task_sid,
                worker_sid=fetched.worker_sid,
                twilio_request_id=fetched.request_id,
                detail=detail,
                source=Source.FETCH,
            )
        )
        self.projected = ReservationState(
            self.action.reservation_sid,
            self.action.workspace_sid,
            fetched.task_sid,
            fetched.worker_sid,
            fetched.status.value,
            fetched.etag,
            recorded.transition_position,
            self.clock(),
        )

    def _send(self, decision: Send, known: _Known) -> TransitionResult:
        # Write-ahead: the ledger knows the update is on its way before TaskRouter does, so a run
        # that finds no answer after it resolves it instead of sending blindly (``_resolve``).
        self.ledger.append(
            Intent(
                self.action.action_id,
                attempt=self.attempt,
                etag_before=known.etag,
                from_status=known.status.value,
                to_status=decision.target.value if decision.target else None,
                arguments=decision.arguments,
            )
        )
        started = time.perf_counter()
        try:
            updated = self.gateway.update(self.ref, decision.arguments, if_match=known.etag)
        except PreconditionFailed:
            raise  # recorded with what the re-fetch finds, in _after_conflict
        except TaskRouterError as exc:
            self._answer(
                Attempt(
                    self.action.action_id,
                    attempt=self.attempt,
                    etag_before=known.etag,
                    http_status=exc.status,
                    twilio_error_code=exc.code,
                    twilio_request_id=exc.request_id,
                    duration_ms=_elapsed_ms(started),
                    detail=str(exc),
                )
            )
            raise
        return self._answer(
            self._transition(
                known.status.value,
                known.etag,
                updated,
                self.attempt,
                http_status=updated.http_status,
                duration_ms=_elapsed_ms(started),
            )
        )

    def _transition(
        self,
        from_status: str | None,
        etag_before: str | None,
        now: FetchedReservation,
        attempt: int | None,
        *,
        http_status: int | None = None,
        duration_ms: int | None = None,
        detail: str | None = None,
        source: Source = Source.ACTION,
    ) -> Transition:
        """Our update's transition, linked to the action, which it settles as ``applied``: learnt
        from its answer (``action``) or, after a lost answer, on a fetch (``fetch``)."""
        return Transition(
            self.action.reservation_sid,
            from_status=from_status,
            to_status=now.status.value,
            etag_before=etag_before,
            etag_after=now.etag,
            action_id=self.action.action_id,
            outcome=Outcome.APPLIED,
            workspace_sid=self.action.workspace_sid,
            task_sid=now.task_sid,
            worker_sid=now.worker_sid,
            attempt=attempt,
            http_status=http_status,
            twilio_request_id=now.request_id,
            duration_ms=duration_ms,
            detail=detail,
            source=source,
        )

    @overload
    def _answer(self, event: Transition) -> TransitionResult: ...
    @overload
    def _answer(self, event: Attempt | Conflict) -> int: ...

    def _answer(self, event: Transition | Attempt | Conflict) -> TransitionResult | int:
        """Record TaskRouter's answer to an update. Should our connection die now (and the
        reservation's lock with it), the answer is recorded on a fresh one (the chain's own lock
        orders it) rather than leave its intent to the next run to resolve blind; after two more
        tries, it will be."""
        for writer in (self.ledger, self.unlocked):
            try:
                return writer.append(event)
            except LedgerUnavailable:
                continue
        return self.unlocked.append(event)

    def _after_conflict(self, conflict: PreconditionFailed, stale: _Known, conflicts: int) -> _Known | None:
        """Record the 412 with what a fresh fetch shows; None once immediate tries are used up."""
        pause = self.policy.conflict_pause(conflicts, self.rng)
        fresh: _Known | None = None
        try:
            if pause is not None:
                self.sleep(pause)
                fresh = self._fetch()
        finally:  # the 412 is recorded even when the re-fetch fails
            self._record_conflict(conflict, stale, fresh)
        return fresh

    def _record_conflict(self, conflict: PreconditionFailed, stale: _Known, fresh: _Known | None) -> None:
        self._answer(
            Conflict(
                self.action.action_id,
                attempt=self.attempt,
                etag_before=stale.etag,
                etag_after=fresh.etag if fresh else None,
                to_status=fresh.status.value if fresh else None,
                twilio_error_code=conflict.code,
                twilio_request_id=conflict.request_id,
                detail=str(conflict),
            )
        )

    def _permanent(self, exc: PermanentTaskRouterError) -> Result:
        target = target_status(self.action)
        if exc.status == 400 and target is not None:
            # A 400 can mean that our earlier, timed-out update did land: look before failing.
            try:
                current = self._fetch()
            except TaskRouterError:
                current = None
            if current is not None and current.status is target:
                reason = f"TaskRouter refused the update ({exc}), but the reservation is already {target}"
                return self._finish(Outcome.ALREADY_APPLIED, reason, exc)
        return self._finish(Outcome.FAILED, str(exc), exc)

    def _finish(self, outcome: Outcome, reason: str, exc: TaskRouterError | None = None) -> Done:
        settled = self.ledger.append(
            Settle(
                self.action.action_id,
                outcome,
                http_status=exc.status if exc else None,
                twilio_error_code=exc.code if exc else None,
                twilio_request_id=exc.request_id if exc else None,
                detail=reason,
            )
        )
        return _kept(outcome, reason, settled.outcome)

    def _later(self, reason: str, retry_after: float | None = None) -> Result:
        delay = self.policy.delay(self.delivery.retries, self.rng, retry_after)
        if delay is None:
            return self._finish(
                Outcome.DEAD_LETTERED, f"retries exhausted after {self.delivery.retries + 1} runs: {reason}"
            )
        return RetryLater(delay, reason)


def _kept(outcome: Outcome, reason: str, recorded: str | None) -> Done:
    """The outcome the ledger kept: ours, or the one an earlier run had settled first."""
    if recorded is not None and recorded != outcome.value:
        return Done(Outcome(recorded), "already settled by an earlier run")
    return Done(outcome, reason)


def _action_id(message: object) -> uuid.UUID | None:
    """The action_id of a message that passed the schema (so it is a UUID), if it has one."""
    value = message.get("action_id") if isinstance(message, Mapping) else None
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
