"""The apply task: a thin adapter from a broker message to the applier's result.

Every decision lives in :class:`~workers.apply.applier.ActionApplier` (``apply_message``); here
a :class:`~workers.apply.applier.RetryLater` becomes a Celery retry (parked in the broker by native
delayed delivery, since the queue is quorum, and published with a confirm), a result that keeps its
message for redrive becomes a message in ``reservations.dead``, and every settled run is logged and
counted. The task reaches this process's runtime through its app (``workers.composition``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Celery, Task
from celery.exceptions import Reject
from cryptography.fernet import MultiFernet

from workers import metrics, tracing
from workers.apply.applier import ActionApplier, Delivery, Done, Result, RetryLater
from workers.broker.dead_letters import publish_dead_letter
from workers.broker.publishing import CONFIRM_TIMEOUT, Publishers, hand_to_apply
from workers.broker.sealing import kept_of_action, kept_of_refused
from workers.broker.topology import (
    APPLY_QUEUE_NAME,
    APPLY_TASK_NAME,
    DELIVERY_COUNT_HEADER,
    DELIVERY_LIMIT,
    OUTCOME_HEADER,
    PUBLISHED_AT_HEADER,
    delivery_count,
)
from workers.core.planner import Outcome
from workers.core.redaction import display_args
from workers.core.validation import Accepted
from workers.errors import LedgerPermissionDenied

logger = logging.getLogger("workers.apply")


def register(app: Celery) -> None:
    """Register the apply task on ``app`` (whose ``runtime`` it uses)."""
    app.task(
        bind=True,
        name=APPLY_TASK_NAME,
        max_retries=None,  # the retry policy decides, and ends in dead_lettered
        acks_late=True,
        reject_on_worker_lost=True,
    )(apply_action)


def apply_action(self: Task, message: dict[str, Any]) -> str:
    """Apply one reservation action (the v1 wire message) exactly once, in the trace its message
    carries (``workers.tracing``; nothing when tracing is off)."""
    carried = {name: getattr(self.request, name, None) for name in tracing.HEADERS}
    run = self.request.retries + 1
    with tracing.continued("apply", carried, APPLY_QUEUE_NAME, **_fields(message), run=run) as span:
        outcome = _apply(self, message)
        tracing.set_attributes(span, outcome=outcome)
        return outcome


def _apply(self: Task, message: dict[str, Any]) -> str:
    runtime = self.app.runtime
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    run = self.request.retries + 1
    if run == 1 and not redelivered:
        metrics.queue_lag(getattr(self.request, PUBLISHED_AT_HEADER, None))
    deliveries = delivery_count(getattr(self.request, DELIVERY_COUNT_HEADER, None))
    try:
        if deliveries >= DELIVERY_LIMIT - 1:
            # Its runs keep dying with their worker. RabbitMQ would dead-letter it itself after
            # this delivery, raw and without a reason: we do it now, sealed, with one.
            reason = f"delivered {deliveries + 1} times without an outcome: its runs die with their worker"
            result: Result = runtime.applier().give_up(message, reason)
        else:
            result = runtime.applier().apply_message(message, Delivery(self.request.retries, redelivered))
    except LedgerPermissionDenied as exc:
        _stop_taking_work(self, exc)
        raise Reject(exc, requeue=True) from exc
    if not isinstance(result, Done):
        _count_retry(message, result, run)
        _retry(self, runtime.publishers, message, result.delay)
    if result.keeps_message:
        _dead_letter(runtime.publishers, message, result, runtime.dead_letter_keys)
    _log(message, result.outcome.value, result.reason, run=run)
    metrics.outcome(result.outcome.value, run)
    return result.outcome.value


def _count_retry(message: dict[str, Any], result: RetryLater, run: int) -> None:
    """The log line and the metric of a run to try again later."""
    logger.info(
        "action %s: retry in %s s (%s)",
        message.get("action_id"),
        whole_seconds(result.delay),
        result.reason,
        extra={**_fields(message), "run": run, "delay": result.delay},
    )
    metrics.RETRIES.inc()


class ArrivalApply:
    """The intake's :class:`~workers.broker.intake.Applying`: an action applied in the thread that
    took it from ``reservations.actions``, as the apply task would apply it (same applier, same
    outcomes, dead letters, logs and metrics), without a second trip through RabbitMQ.

    A run to try later goes to the apply task with its countdown (confirmed), as the task's own
    retry would; from there the task counts the runs on. Raises (nothing is acknowledged) when a
    dead letter or that hand-over is not confirmed.
    """

    def __init__(
        self, applier: Callable[[], ActionApplier], publishers: Publishers, keys: MultiFernet | None
    ) -> None:
        self._applier = applier
        self.publishers = publishers
        self.keys = keys

    def apply(self, accepted: Accepted, redelivered: bool) -> str | None:
        message = accepted.message
        result = self._applier().apply_valid(accepted.action, Delivery(0, redelivered))
        if not isinstance(result, Done):
            _count_retry(message, result, 1)
            hand_to_apply(self.publishers, message, countdown=whole_seconds(result.delay), retries=1)
            return None
        # A producer's copy of a settled action finds its dead letter sent; a redelivery (we died
        # on the way) may not have sent it yet.
        if result.keeps_message and (redelivered or not result.repeat):
            _dead_letter(self.publishers, message, result, self.keys)
        _log(message, result.outcome.value, result.reason, run=1)
        metrics.outcome(result.outcome.value, 1)
        return result.outcome.value

    def give_up(self, message: dict[str, Any], reason: str) -> None:
        self._applier().give_up(message, reason)


def _retry(task: Task, publishers: Publishers, message: dict[str, Any], delay: float) -> NoReturn:
    """Raise Celery's Retry once the retry's message is confirmed; if it cannot be published,
    hand this message back to the broker (Celery would reject it: lost, or dead-lettered with no
    reason and no outcome)."""
    try:
        with publishers.confirmed() as producer:
            raise task.retry(
                countdown=whole_seconds(delay),
                argsrepr=display_args(message),
                producer=producer,
                confirm_timeout=CONFIRM_TIMEOUT,
            )
    except Reject as exc:
        raise Reject(exc.reason, requeue=True) from exc
    except (OSError, TimeoutError, ConnectionError) as exc:  # no producer to be had
        raise Reject(exc, requeue=True) from exc


def _stop_taking_work(task: Task, exc: Exception) -> None:
    """A deployment error (the ledger refuses our role): every message would fail the same way,
    so this worker stops consuming and says so; the message goes back to the queue."""
    logger.critical(
        "the ledger refuses this worker's role (%s): fix the grants (`reservations migrate` as the"
        " owner); this worker stops taking work and hands the action back",
        exc,
    )
    hostname = task.request.hostname
    for queue in (APPLY_QUEUE_NAME,):
        try:
            task.app.control.cancel_consumer(queue, destination=[hostname] if hostname else None)
        except Exception:
            logger.exception("could not stop consuming %s", queue)


def _dead_letter(
    publishers: Publishers, message: dict[str, Any], result: Done, keys: MultiFernet | None
) -> None:
    """``publish_dead_letter``, or hand the message back to the broker if RabbitMQ does not confirm.

    Nothing sensitive goes in clear (``workers.broker.sealing``): a refused message is masked (it is
    never redriven); any other keeps its sensitive parameters sealed with ``DEAD_LETTER_KEY``, or
    leaves them out (named in a header) when no key is set.

    Acknowledging a message whose dead letter was not confirmed could lose it (the ledger keeps PII
    only as keyed hashes). Requeued, it is delivered again: its outcome is settled by then, so the
    next delivery publishes the dead letter again (at least once into ``reservations.dead``).
    """
    action_id = message.get("action_id")
    if result.outcome is Outcome.REJECTED_INPUT:
        kept, headers = kept_of_refused(message)
    else:
        kept, headers = kept_of_action(message, keys)
    try:
        publish_dead_letter(
            publishers,
            kept,
            result.reason,
            action_id=action_id if isinstance(action_id, str) else None,
            extra_headers={OUTCOME_HEADER: result.outcome.value, **headers},
        )
    except Exception as exc:
        raise Reject(exc, requeue=True) from exc


def whole_seconds(delay: float) -> int:
    """Native delayed delivery counts in whole seconds and refuses a countdown under one."""
    return max(1, math.ceil(delay))


def _fields(message: dict[str, Any]) -> dict[str, Any]:
    return {name: message.get(name) for name in ("action_id", "reservation_sid", "correlation_id")}


def _log(message: dict[str, Any], outcome: str, reason: str, **extra: Any) -> None:
    logger.info(
        "action %s: %s (%s)",
        message.get("action_id"),
        outcome,
        reason,
        extra={**_fields(message), "outcome": outcome, **extra},
    )
