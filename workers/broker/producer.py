"""The producer client: publish reservation actions from Python, as any other service would.

:class:`Producer` (and :func:`publish`) validates a message against the v1 JSON Schema, then
publishes it as plain JSON to the ``reservations`` exchange, routing key ``action.<action>``,
persistent, ``mandatory`` and with publisher confirms, exactly as a producer in any other language
would (``ops/PRODUCERS.md``). It returns once RabbitMQ has the message and raises
:class:`PublishError` when RabbitMQ refuses, cannot route or does not confirm it. It needs
nothing but the broker URL: no Celery app, no database. (Internal callers that already hold a
valid action hand it straight to the apply task: ``ReservationsApp.enqueue``.)
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer as KombuProducer

from workers.broker.publishing import CONFIRM_TIMEOUT
from workers.broker.reach import where
from workers.broker.topology import ACTIONS_EXCHANGE, routing_key_for
from workers.config import broker_url_from_env
from workers.core.action import Action
from workers.core.closing import Closing
from workers.core.validation import JSON_CONTENT_TYPE, Rejected, decide
from workers.errors import ReservationsError, unreachable

_PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0}


class InvalidAction(ReservationsError):
    """The message breaks the v1 schema; ``code`` and ``reason`` say how (as the intake would)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid action ({self.code}): {self.reason}"


class PublishError(ReservationsError):
    """RabbitMQ did not take the message: refused (nack), unroutable, unreachable or no confirm."""


def _wire_form(action: Action | Mapping[str, Any]) -> dict[str, Any]:
    return action.to_message() if isinstance(action, Action) else dict(action)


def encode(action: Action | Mapping[str, Any]) -> bytes:
    """Validate ``action`` (an Action or its wire form) and return the body to publish.

    Raises :class:`InvalidAction` when the intake would refuse it.
    """
    message = _wire_form(action)
    try:
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidAction("invalid_json", f"not JSON-serialisable: {exc}") from None
    fate = decide(body, JSON_CONTENT_TYPE, "utf-8")
    if isinstance(fate, Rejected):
        raise InvalidAction(fate.code.value, fate.reason)
    return body


class Producer(Closing):
    """A connection to RabbitMQ that publishes validated actions with publisher confirms.

    Thread-safe (publishes are serialised); reuse one per process. ``broker_url`` defaults to
    ``CELERY_BROKER_URL``.

    >>> with Producer() as producer:  # doctest: +SKIP
    ...     producer.publish(action)
    """

    def __init__(self, broker_url: str | None = None, *, confirm_timeout: float = CONFIRM_TIMEOUT) -> None:
        self.broker_url = broker_url or broker_url_from_env()
        self.confirm_timeout = confirm_timeout
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: KombuProducer | None = None

    def _ensure(self) -> KombuProducer:
        if self._producer is None:
            self._connection = Connection(
                self.broker_url,
                transport_options={"confirm_publish": True},
            )
            self._producer = KombuProducer(self._connection)
        return self._producer

    def connect(self) -> None:
        """Open the connection now: a service finds out at start-up, not on its first publish."""
        with self._lock:
            try:
                producer = self._ensure()
                producer.connection.ensure_connection(**_PUBLISH_RETRY)
            except Exception as exc:
                self._reset()
                reason = f"{type(exc).__name__}: {exc}"
                raise PublishError(unreachable("RabbitMQ", where(self.broker_url), reason)) from exc

    def publish(self, action: Action | Mapping[str, Any]) -> None:
        """Validate and publish one action; return once RabbitMQ confirmed it."""
        body = encode(action)
        message = _wire_form(action)
        with self._lock:
            try:
                producer = self._ensure()
                producer.publish(
                    body,
                    exchange=ACTIONS_EXCHANGE,
                    routing_key=routing_key_for(str(message["action"])),
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                    mandatory=True,
                    message_id=str(message["action_id"]),
                    retry=True,
                    retry_policy=_PUBLISH_RETRY,
                    confirm_timeout=self.confirm_timeout,
                )
            except Exception as exc:
                self._reset()
                raise PublishError(
                    f"RabbitMQ did not confirm action {message.get('action_id')}: {type(exc).__name__}: {exc}"
                ) from exc

    def _reset(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to save
                connection.release()

    def close(self) -> None:
        with self._lock:
            self._reset()


def publish(action: Action | Mapping[str, Any], broker_url: str | None = None) -> None:
    """Validate and publish one action on a connection of its own (see :class:`Producer`)."""
    with Producer(broker_url) as producer:
        producer.publish(action)
