"""The intake, where an action enters: a Celery consumer bootstep on ``reservations.actions``.

Producers in any language publish plain JSON (design doc, "Wire contract, version 1"). This step
consumes it raw, with its own channel and a bounded prefetch: kombu's decoding is bypassed
(``on_message``), because kombu's default for an undecodable message is to acknowledge and drop it.
For each message, :func:`~workers.core.validation.decide` gives exactly one fate:

- **accepted**: with intake threads (the threads pool, the default) the action is applied at once,
  in the intake's thread, by the same applier as the apply task's (``Applying``): one broker hop,
  no second publish and confirm. The message is acknowledged once the action has its outcome (its
  dead letter confirmed if it keeps one), or once a run that must be tried later was handed to the
  apply task with its countdown (confirmed). The worker's task events (``task-received``,
  ``-started``, ``-succeeded``, ``-retried``) are sent for it under the apply task's name and the
  action_id, so Flower shows it like any task. Without threads (the gevent and eventlet pools,
  whose consumer handles messages where they arrive) the action is recorded as received
  (idempotent on its action_id), then handed to the apply task (task id = action_id, confirmed
  publish), then acknowledged; a copy of an action that has already settled is acknowledged
  without a second hand-off;
- **rejected**: a ``rejected_input`` ledger row (PII redacted), then the message goes to
  ``reservations.dead`` with the reason in headers (confirmed publish), masked if it is a JSON
  object, else only its size and SHA-256 (it may hold secrets), then acknowledged.

When the ledger or the broker fails on the way, the message is not acknowledged: it is requeued
after a pause that grows with its delivery count (up to ``MAX_RETRY_PAUSE``) and tried again (a
retry may repeat the rejected_input row or the dead letter; an accepted action is idempotent on its
action_id). On its last delivery (``DELIVERY_LIMIT``, about four minutes of failures) the intake
dead-letters it itself, sealed or masked like any dead letter, before RabbitMQ would move it there
raw. A refused privilege (a deployment error) stops the intake consuming and hands the message
back. Nothing escapes the handler: the consumer never crashes.

The step declares everything it uses: the ``reservations`` exchange, the queue and its binding,
and the dead-letter exchange and queue. It consumes with a prefetch of ``INTAKE_PREFETCH`` messages
(default 32). It runs in the worker's main process; the runtime builds it (``workers.composition``),
and its ledger pool is opened lazily, on the first message.

The worker's event loop must not wait on the ledger or on a publisher confirm (it also delivers
the apply tasks and their acknowledgements), so the loop only hands each message to one of
as many threads as the worker's concurrency (at least ``INTAKE_THREADS``), and the thread gives the
acknowledgement (or the requeue) and the task events back to the loop, the one thread that may
touch the channel. Without an event loop (the gevent and eventlet pools) messages are handled
where they arrive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from celery import Celery, bootsteps
from cryptography.fernet import MultiFernet
from kombu.message import Message
from kombu.messaging import Consumer

from workers import tracing
from workers.broker.dead_letters import publish_dead_letter
from workers.broker.publishing import Publishers, hand_to_apply
from workers.broker.sealing import kept_of_action, kept_of_refused, raw_body
from workers.broker.topology import (
    ACTIONS_QUEUE_NAME,
    APPLY_TASK_NAME,
    DELIVERY_COUNT_HEADER,
    DELIVERY_LIMIT,
    OUTCOME_HEADER,
    REJECT_CODE_HEADER,
    actions_queue,
    dead_letter_queue,
    delivery_count,
)
from workers.core.planner import Outcome
from workers.core.redaction import display_args
from workers.core.validation import Accepted, Fate, RejectCode, Rejected, decide, readable
from workers.errors import LedgerPermissionDenied
from workers.ledger.events import RejectedInput
from workers.ledger.models import Arrival
from workers.ledger.writer import PostgresLedgerWriter

logger = logging.getLogger("workers.intake")

DEFAULT_PREFETCH = 32
# Pause before a message whose handling failed is requeued: grows with its delivery count, so
# that the queue's delivery limit (20) outlasts a database fail-over of a few minutes.
RETRY_PAUSE = 0.05
MAX_RETRY_PAUSE = 15.0


OnLoop = Callable[[Callable[[], None]], Any]


class Applying(Protocol):
    """Applies an accepted action where the intake holds it (``workers.apply.task.ArrivalApply``)."""

    def apply(self, accepted: Accepted, redelivered: bool) -> str | None:
        """Apply it now (validated already): its outcome once settled (dead letter published if it
        keeps one), None once a run to try later is handed to the apply task; raises when neither
        holds."""
        ...

    def give_up(self, message: dict[str, Any], reason: str) -> None:
        """Record ``dead_lettered`` for an action whose message keeps coming back unsettled."""
        ...


# The worker's event dispatcher (Celery's), when there is one: Flower's view of the tasks.
Events = Callable[[], Any]


def at_once(callback: Callable[[], None]) -> None:
    callback()


class Intake:
    """Handles raw messages: decides their fate, records it, forwards it, acknowledges them.

    With ``threads`` > 0 the handling runs on a pool of that many threads, and every
    acknowledgement or requeue is passed to ``on_loop`` (the event loop's thread-safe
    ``call_soon``); otherwise everything happens in the caller, at once.
    """

    def __init__(
        self,
        open_ledger: Callable[[], PostgresLedgerWriter],
        publishers: Publishers,
        *,
        threads: int = 0,
        on_loop: OnLoop = at_once,
        prefetch: int = DEFAULT_PREFETCH,
        dead_letter_keys: MultiFernet | None = None,
        applying: Applying | None = None,
        events: Events = lambda: None,
    ) -> None:
        self.publishers = publishers
        self.applying = applying  # None: hand accepted actions to the apply task
        self._events = events
        self.prefetch = prefetch
        self.dead_letter_keys = dead_letter_keys
        # Set by the consumer step: stops taking messages (a deployment error makes them all fail).
        self.stop_consuming: Callable[[], None] | None = None
        self._stopped = threading.Event()
        self._open_ledger = open_ledger
        self._ledger: PostgresLedgerWriter | None = None
        self._lock = threading.Lock()
        self._on_loop = on_loop
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="intake") if threads > 0 else None
        self._closing = threading.Event()

    @property
    def ledger(self) -> PostgresLedgerWriter:
        with self._lock:
            if self._ledger is None:
                self._ledger = self._open_ledger()
            return self._ledger

    def close(self) -> None:
        """Stop. Messages not started yet are left to the broker (it redelivers them); those in
        hand finish (a retry pause is cut short), and their acknowledgements or requeues are
        given here: call it from the event loop's thread, after the loop stopped and before the
        channel closes."""
        self._closing.set()
        if self._executor is not None:
            handed_back: list[Callable[[], None]] = []
            self._on_loop = handed_back.append  # the loop no longer turns
            self._executor.shutdown(wait=True, cancel_futures=True)
            for callback in handed_back:
                callback()
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def on_message(self, message: Message) -> None:
        """kombu's ``on_message`` callback: never raises."""
        self._dispatch(message, None)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """kombu could not even unpack the message (e.g. an unknown compression header)."""
        fate = Rejected(RejectCode.CONTENT_ENCODING, f"kombu cannot unpack it: {type(exc).__name__}")
        self._dispatch(message, fate)

    def _dispatch(self, message: Message, fate: Fate | None) -> None:
        if self._executor is None:
            self._handle(message, fate)
            return
        try:
            self._executor.submit(self._handle, message, fate).add_done_callback(_report_escaped)
        except RuntimeError:  # shutting down: the broker redelivers what was not acknowledged
            logger.warning("intake: shutting down, a message is left for redelivery")

    def _handle(self, message: Message, fate: Fate | None) -> None:
        """Settle one message. Nothing escapes: in a pool thread it would leave the message
        neither acknowledged nor requeued."""
        try:
            with tracing.continued("intake", message.headers, ACTIONS_QUEUE_NAME) as span:
                if fate is None:
                    fate = decide(raw_body(message), message.content_type, message.content_encoding)
                tracing.set_attributes(span, **_traced(fate))
                self.settle(message, fate)
        except LedgerPermissionDenied as exc:
            self._deployment_error(exc)
            self._on_loop(partial(_requeue, message))
        except Exception as exc:
            if _delivery_count(message) < DELIVERY_LIMIT - 1:
                logger.exception("intake: could not settle a message; it will be redelivered")
                self._retry_later(message)
                return
            # RabbitMQ would dead-letter it itself after this delivery, with its body in clear
            # and no reason: we do it first, sealed or masked like any of our dead letters.
            logger.exception("intake: giving up on a message after %d deliveries", _delivery_count(message))
            self._give_up(message, fate, f"the intake gave up after {DELIVERY_LIMIT} deliveries: {exc}")

    def _deployment_error(self, exc: LedgerPermissionDenied) -> None:
        """Every message would fail the same way: stop consuming (once), say so, hand back."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        logger.critical(
            "the ledger refuses this worker's role (%s): fix the grants (`reservations migrate` as"
            " the owner); the intake stops taking messages and hands them back",
            exc,
        )
        if self.stop_consuming is not None:
            self._on_loop(self.stop_consuming)

    def _give_up(self, message: Message, fate: Fate | None, reason: str) -> None:
        try:
            action_id: str | None
            if isinstance(fate, Accepted):
                if self.applying is not None:  # its runs were ours: the ledger settles it too
                    self.applying.give_up(fate.message, reason)
                kept, headers = kept_of_action(fate.message, self.dead_letter_keys)
                outcome, action_id = Outcome.DEAD_LETTERED, str(fate.action.action_id)
            else:
                parsed = fate.message if isinstance(fate, Rejected) else None
                kept, headers = kept_of_refused(parsed, raw_body(message), message.content_type)
                outcome, action_id = Outcome.REJECTED_INPUT, fate.action_id if fate is not None else None
            publish_dead_letter(
                self.publishers,
                kept,
                reason,
                action_id=action_id,
                extra_headers={OUTCOME_HEADER: outcome.value, **headers},
            )
        except Exception:
            logger.exception("intake: could not dead-letter a message; it goes back to the queue")
            self._on_loop(partial(_requeue, message))
            return
        self._on_loop(partial(_acknowledge, message))

    def settle(self, message: Message, fate: Fate) -> None:
        """Record and forward ``fate``, then acknowledge; raises if any step fails (nothing acked)."""
        if isinstance(fate, Accepted) and self.applying is not None:
            self._apply(message, fate)
        elif isinstance(fate, Accepted):
            arrival = self.ledger.receive(fate.action)
            if arrival.outcome is None:
                hand_to_apply(self.publishers, fate.message)
            logger.info(
                "intake: action %s accepted%s",
                fate.action.action_id,
                _seen_before(arrival),
                extra={
                    "action_id": str(fate.action.action_id),
                    "reservation_sid": fate.action.reservation_sid,
                    "correlation_id": fate.action.correlation_id,
                },
            )
        else:
            self.ledger.append(RejectedInput(readable(fate.message), fate.text))
            # Never the bytes as they came: they may hold a secret (workers.broker.sealing).
            kept, headers = kept_of_refused(fate.message, raw_body(message), message.content_type)
            publish_dead_letter(
                self.publishers,
                kept,
                fate.text,
                action_id=fate.action_id,
                extra_headers={
                    OUTCOME_HEADER: Outcome.REJECTED_INPUT.value,
                    REJECT_CODE_HEADER: fate.code.value,
                    **headers,
                },
            )
            logger.warning(
                "intake: message rejected: %s",
                fate.text,
                extra={"action_id": fate.action_id, "outcome": Outcome.REJECTED_INPUT.value},
            )
        self._on_loop(partial(_acknowledge, message))

    def _apply(self, message: Message, fate: Accepted) -> None:
        """Apply the action in this thread, announced to Flower as a run of the apply task."""
        assert self.applying is not None
        task_id = str(fate.action.action_id)
        redelivered = bool((message.delivery_info or {}).get("redelivered"))
        self._announce(
            "task-received",
            uuid=task_id,
            name=APPLY_TASK_NAME,
            args=display_args(fate.message),
            kwargs="{}",
            root_id=task_id,
            parent_id=None,
            retries=0,
            eta=None,
            expires=None,
        )
        self._announce("task-started", uuid=task_id, pid=os.getpid())
        started = time.monotonic()
        outcome = self.applying.apply(fate, redelivered)
        if outcome is None:
            self._announce(
                "task-retried", uuid=task_id, exception="Retry('handed to the apply task')", traceback=""
            )
        else:
            self._announce(
                "task-succeeded", uuid=task_id, result=repr(outcome), runtime=time.monotonic() - started
            )

    def _announce(self, kind: str, **fields: Any) -> None:
        """Send a task event if someone watches (Flower turns them on), from the event loop's
        thread: the dispatcher writes on the consumer's connection, which only the loop touches."""
        dispatcher = self._events()
        if (
            dispatcher is None
            or not dispatcher.enabled
            or (dispatcher.groups and "task" not in dispatcher.groups)
        ):
            return
        self._on_loop(partial(_send_event, dispatcher, kind, fields))

    def _retry_later(self, message: Message) -> None:
        self._pause(min(RETRY_PAUSE * 2 ** _delivery_count(message), MAX_RETRY_PAUSE))
        self._on_loop(partial(_requeue, message))

    def _pause(self, seconds: float) -> None:
        """Sleep, unless the intake closes meanwhile."""
        self._closing.wait(seconds)


class IntakeStep(bootsteps.ConsumerStep):  # type: ignore[misc]  # celery ships no types
    """Consume ``reservations.actions`` inside the worker (``app.steps["consumer"].add(IntakeStep)``)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.intake: Intake | None = None

    def start(self, c: Any) -> None:
        if self.intake is None:
            concurrency = getattr(getattr(c, "controller", None), "concurrency", None)
            self.intake = c.app.runtime.intake(
                getattr(c, "hub", None), lambda: getattr(c, "event_dispatcher", None), concurrency
            )
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        assert self.intake is not None, "start() builds the intake first"
        dead_letter_queue()(channel).declare()
        consumer = Consumer(
            channel,
            queues=[actions_queue()],
            on_message=self.intake.on_message,
            on_decode_error=self.intake.on_decode_error,
            prefetch_count=self.intake.prefetch,
            auto_declare=True,
        )
        self.intake.stop_consuming = consumer.cancel
        return [consumer]

    def shutdown(self, c: Any) -> None:
        if self.intake is not None:
            self.intake.close()  # while the channel is still open, for the last acknowledgements
            self.intake = None  # a consumer started again builds a new one (closed pools do not reopen)
        super().shutdown(c)


def install(app: Celery) -> None:
    """Run the intake in every worker of ``app``."""
    app.steps["consumer"].add(IntakeStep)


def _traced(fate: Fate) -> dict[str, object]:
    if isinstance(fate, Accepted):
        return {"action_id": str(fate.action.action_id), "reservation_sid": fate.action.reservation_sid}
    return {"action_id": fate.action_id, "outcome": Outcome.REJECTED_INPUT.value, "detail": fate.text}


def _seen_before(arrival: Arrival) -> str:
    if arrival.created:
        return ""
    if arrival.outcome is None:
        return " (already received)"
    return f" (already settled, {arrival.outcome}: not handed over again)"


def _report_escaped(future: Future[None]) -> None:
    """``_handle`` lets nothing escape; should something still do, it must not vanish in the pool."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        logger.error("intake: a message was left unacknowledged by an unexpected error", exc_info=exc)


def _send_event(dispatcher: Any, kind: str, fields: dict[str, Any]) -> None:
    try:
        dispatcher.send(kind, **fields)
    except Exception:  # Flower misses one event; the action itself is not concerned
        logger.warning("intake: could not send a %s event", kind, exc_info=True)


def _acknowledge(message: Message) -> None:
    try:
        message.ack()
    except Exception:  # the channel is gone: the broker redelivers unacknowledged messages
        logger.exception("intake: could not acknowledge a message; it will be redelivered")


def _requeue(message: Message) -> None:
    try:
        message.requeue()
    except Exception:  # the channel is gone: the broker redelivers unacknowledged messages
        logger.exception("intake: could not requeue a message")


def _delivery_count(message: Message) -> int:
    return delivery_count((message.headers or {}).get(DELIVERY_COUNT_HEADER))
