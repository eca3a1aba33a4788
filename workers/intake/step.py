"""The intake step: a Celery consumer bootstep on ``reservations.actions``, inside the worker.

Producers in any language publish plain JSON (design doc, "Wire contract, version 1"). This step
consumes it raw, with its own channel and a bounded prefetch: kombu's decoding is bypassed
(``on_message``), because kombu's default for an undecodable message is to acknowledge and drop it.
For each message, :func:`~workers.intake.validation.decide` gives exactly one fate:

- **accepted**: ``ledger.record_received(action)`` (idempotent), then the message is handed to the
  apply task (task id = action_id, confirmed publish), then acknowledged;
- **rejected**: a ``rejected_input`` ledger row (PII redacted), then the original bytes go to
  ``reservations.dead`` with the reason in headers (confirmed publish), then acknowledged.

When the ledger or the broker fails on the way, the message is not acknowledged: it is requeued
after a short pause and tried again (a retry may repeat the rejected_input row or the dead letter;
an accepted action is idempotent on its action_id). After ``DELIVERY_LIMIT`` deliveries RabbitMQ
itself moves it to ``reservations.dead``. Nothing escapes the handler: the consumer never crashes.

The step declares everything it uses: the ``reservations`` exchange, the queue and its binding,
and the dead-letter exchange and queue. It consumes with a prefetch of ``INTAKE_PREFETCH`` messages
(default 32). It runs in the worker's main process; its ledger pool is opened lazily, on the first
message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from kombu.message import Message
from kombu.messaging import Consumer

from workers.config import Settings
from workers.core.planner import Outcome
from workers.dead_letters import publish_dead_letter
from workers.intake.validation import Accepted, Fate, RejectCode, Rejected, decide, readable
from workers.ledger import Ledger
from workers.producer import hand_to_apply
from workers.topology import (
    OUTCOME_HEADER,
    REJECT_CODE_HEADER,
    actions_queue,
    dead_letter_queue,
)

logger = logging.getLogger("workers.intake")

DEFAULT_PREFETCH = 32
# Pause before a message whose handling failed is requeued: grows with its delivery count.
RETRY_PAUSE = 0.05
MAX_RETRY_PAUSE = 1.0


class Intake:
    """Handles raw messages: decides their fate, records it, forwards it, acknowledges them."""

    def __init__(self, app: Celery, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()

    @property
    def ledger(self) -> Ledger:
        with self._lock:
            if self._ledger is None:
                settings = self.settings or Settings.from_env()
                self._ledger = Ledger.from_settings(settings, min_size=1, max_size=2)
            return self._ledger

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None

    def on_message(self, message: Message) -> None:
        """kombu's ``on_message`` callback: never raises."""
        try:
            fate = decide(_body(message), message.content_type, message.content_encoding)
            self.settle(message, fate)
        except Exception:
            logger.exception("intake: could not settle a message; it will be redelivered")
            self._retry_later(message)

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """kombu could not even unpack the message (e.g. an unknown compression header)."""
        try:
            fate = Rejected(RejectCode.CONTENT_ENCODING, f"kombu cannot unpack it: {type(exc).__name__}")
            self.settle(message, fate)
        except Exception:
            logger.exception("intake: could not dead-letter an undecodable message")
            self._retry_later(message)

    def settle(self, message: Message, fate: Fate) -> None:
        """Record and forward ``fate``, then acknowledge; raises if any step fails (nothing acked)."""
        if isinstance(fate, Accepted):
            receipt = self.ledger.record_received(fate.action)
            hand_to_apply(self.app, fate.message)
            logger.info(
                "intake: action %s accepted%s",
                fate.action.action_id,
                "" if receipt.created else " (already received)",
                extra={"action_id": str(fate.action.action_id), "outcome": "received"},
            )
        else:
            self.ledger.record_rejected_input(readable(fate.message), fate.text)
            publish_dead_letter(
                self.app,
                _body(message),
                fate.text,
                action_id=fate.action_id,
                content_type=message.content_type or "application/octet-stream",
                extra_headers={
                    OUTCOME_HEADER: Outcome.REJECTED_INPUT.value,
                    REJECT_CODE_HEADER: fate.code.value,
                },
            )
            logger.warning(
                "intake: message rejected: %s",
                fate.text,
                extra={"action_id": fate.action_id, "outcome": Outcome.REJECTED_INPUT.value},
            )
        message.ack()

    def _retry_later(self, message: Message) -> None:
        count = _delivery_count(message)
        time.sleep(min(RETRY_PAUSE * 2**count, MAX_RETRY_PAUSE))
        try:
            message.requeue()
        except Exception:  # the channel is gone: the broker redelivers unacknowledged messages
            logger.exception("intake: could not requeue a message")


class IntakeStep(bootsteps.ConsumerStep):  # type: ignore[misc]  # celery ships no types
    """Consume ``reservations.actions`` inside the worker (``app.steps["consumer"].add(IntakeStep)``)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.intake: Intake | None = None

    def start(self, c: Any) -> None:
        if self.intake is None:
            self.intake = Intake(c.app)
        super().start(c)

    def get_consumers(self, channel: Any) -> list[Consumer]:
        assert self.intake is not None, "start() builds the intake first"
        dead_letter_queue()(channel).declare()
        prefetch = int(os.environ.get("INTAKE_PREFETCH", DEFAULT_PREFETCH))
        consumer = Consumer(
            channel,
            queues=[actions_queue()],
            on_message=self.intake.on_message,
            on_decode_error=self.intake.on_decode_error,
            prefetch_count=prefetch,
            auto_declare=True,
        )
        return [consumer]

    def shutdown(self, c: Any) -> None:
        super().shutdown(c)
        if self.intake is not None:
            self.intake.close()


def install(app: Celery) -> None:
    """Run the intake in every worker of ``app``."""
    app.steps["consumer"].add(IntakeStep)


def _body(message: Message) -> bytes:
    body = message.body
    if isinstance(body, str):  # transports other than py-amqp may hand text
        return body.encode("utf-8", "surrogateescape")
    return bytes(body)


def _delivery_count(message: Message) -> int:
    headers = message.headers or {}
    count = headers.get("x-delivery-count", 0)
    return count if isinstance(count, int) and count >= 0 else 0
