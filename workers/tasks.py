"""The Celery tasks: thin adapters from broker messages to the applier.

All decisions live in :mod:`workers.applier`; here a :class:`~workers.applier.RetryLater` becomes
a Celery retry (parked in the broker by native delayed delivery, since the queue is quorum), and
a dead-lettered outcome becomes a message in ``reservations.dead`` with its reason.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject

from workers import metrics
from workers.applier import Delivery, Done
from workers.celery import APPLY_TASK_NAME, app
from workers.config import Settings
from workers.core.action import Action
from workers.core.planner import Outcome
from workers.core.redaction import mask_message
from workers.dead_letters import publish_dead_letter
from workers.errors import LedgerError, LedgerPermissionDenied
from workers.ledger.events import RejectedInput
from workers.producer import PUBLISHED_AT_HEADER
from workers.publishing import CONFIRM_TIMEOUT, confirmed_producer
from workers.runtime import Runtime
from workers.topology import OUTCOME_HEADER

logger = logging.getLogger("workers.apply")

# Outcomes whose message goes to reservations.dead: the ledger keeps PII only as keyed hashes,
# so the dead-letter queue is where an operator finds the whole message to redrive.
KEPT_FOR_REDRIVE = frozenset({Outcome.DEAD_LETTERED, Outcome.FAILED})


class ApplyTask(Task):  # type: ignore[misc]
    """Holds this process's :class:`Runtime`, built on first use (after any fork)."""

    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            type(self)._runtime = Runtime(Settings.from_env())
        assert self._runtime is not None
        return self._runtime


def display_args(message: dict[str, Any]) -> str:
    """What Flower and the logs show of the task's arguments: PII masked, secrets gone."""
    return repr((mask_message(message),))


@app.task(  # type: ignore[untyped-decorator]  # celery ships no types for it
    base=ApplyTask,
    bind=True,
    name=APPLY_TASK_NAME,
    max_retries=None,  # the retry policy decides, and ends in dead_lettered
    acks_late=True,
    reject_on_worker_lost=True,
)
def apply_action(self: ApplyTask, message: dict[str, Any]) -> str:
    """Apply one reservation action (the v1 wire message) exactly once."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    if self.request.retries == 0 and not redelivered:
        metrics.queue_lag(getattr(self.request, PUBLISHED_AT_HEADER, None))
    try:
        action = Action.from_message(message)
    except (ValueError, KeyError, TypeError) as exc:
        # The intake validates against the schema; this is a producer that bypassed it.
        reason = f"malformed action message: {exc}"
        self.runtime.ledger.append(RejectedInput(message, reason))
        _dead_letter(
            self.app,
            message,
            reason,
            action_id=_text(message.get("action_id")),
            extra_headers={OUTCOME_HEADER: Outcome.REJECTED_INPUT.value},
        )
        _ended(message, Outcome.REJECTED_INPUT.value, reason, attempt=self.request.retries + 1)
        return Outcome.REJECTED_INPUT.value

    try:
        result = self.runtime.applier().apply(action, Delivery(self.request.retries, redelivered))
    except LedgerPermissionDenied:
        metrics.LEDGER_ERRORS.inc()
        raise  # a deployment error: fail loudly, never loop on it
    except LedgerError as exc:
        metrics.LEDGER_ERRORS.inc()
        # The ledger is down or the reservation is busy: nothing was decided, try again later.
        delay = self.runtime.policy.delay(self.request.retries, random.Random())
        if delay is None:
            reason = f"retries exhausted, the ledger kept failing: {exc}"
            _dead_letter(
                self.app,
                message,
                reason,
                action_id=str(action.action_id),
                extra_headers={OUTCOME_HEADER: Outcome.DEAD_LETTERED.value},
            )
            _ended(message, Outcome.DEAD_LETTERED.value, reason, attempt=self.request.retries + 1)
            return Outcome.DEAD_LETTERED.value
        metrics.RETRIES.inc()
        with confirmed_producer(self.app) as producer:
            raise self.retry(
                exc=exc,
                countdown=whole_seconds(delay),
                argsrepr=display_args(message),
                producer=producer,
                confirm_timeout=CONFIRM_TIMEOUT,
            ) from exc

    if not isinstance(result, Done):
        _log(message, "retry", result.reason, attempt=self.request.retries + 1, delay=result.delay)
        metrics.RETRIES.inc()
        with confirmed_producer(self.app) as producer:
            raise self.retry(
                countdown=whole_seconds(result.delay),
                argsrepr=display_args(message),
                producer=producer,
                confirm_timeout=CONFIRM_TIMEOUT,
            )
    if result.outcome in KEPT_FOR_REDRIVE:
        _dead_letter(
            self.app,
            message,
            result.reason,
            action_id=str(action.action_id),
            extra_headers={OUTCOME_HEADER: result.outcome.value},
        )
    _ended(message, result.outcome.value, result.reason, attempt=self.request.retries + 1)
    return result.outcome.value


def _dead_letter(
    app: Celery, message: dict[str, Any], reason: str, *, action_id: str | None, extra_headers: dict[str, str]
) -> None:
    """``publish_dead_letter``, or hand the message back to the broker if RabbitMQ does not confirm.

    Acknowledging a message whose dead letter was not confirmed could lose it (the ledger keeps PII
    only as keyed hashes). Requeued, it is delivered again: its outcome is settled by then, so the
    next delivery publishes the dead letter again (at least once into ``reservations.dead``).
    """
    try:
        publish_dead_letter(app, message, reason, action_id=action_id, extra_headers=extra_headers)
    except Exception as exc:
        raise Reject(exc, requeue=True) from exc


def whole_seconds(delay: float) -> int:
    """Native delayed delivery counts in whole seconds and refuses a countdown under one."""
    return max(1, math.ceil(delay))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _ended(message: dict[str, Any], outcome: str, reason: str, *, attempt: int) -> None:
    """The run settled the action (or found it settled): log it and count it."""
    _log(message, outcome, reason, attempt=attempt)
    metrics.outcome(outcome, attempt)


def _log(message: dict[str, Any], outcome: str, reason: str, **extra: Any) -> None:
    logger.info(
        "action %s: %s (%s)",
        message.get("action_id"),
        outcome,
        reason,
        extra={
            "action_id": message.get("action_id"),
            "reservation_sid": message.get("reservation_sid"),
            "correlation_id": message.get("correlation_id"),
            "outcome": outcome,
            **extra,
        },
    )
