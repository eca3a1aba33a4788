"""A plain AMQP 0-9-1 client (py-amqp, no kombu, no Celery), as a producer in another language would
use one: publish raw bytes to the ``reservations`` exchange, read ``reservations.dead``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp

from workers.broker.sealing import digest_only
from workers.core.redaction import mask_rejected
from workers.core.validation import Rejected, decide

EXCHANGE = "reservations"
DEAD_QUEUE = "reservations.dead"


@contextmanager
def channel(broker_url: str) -> Iterator[amqp.Channel]:
    parts = urlsplit(broker_url)
    vhost = unquote(parts.path[1:]) or "/"
    connection = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=parts.username or "guest",
        password=parts.password or "guest",
        virtual_host=vhost,
        confirm_publish=True,
    )
    connection.connect()
    try:
        yield connection.channel()
    finally:
        connection.close()


def publish_raw(
    broker_url: str,
    body: bytes,
    *,
    routing_key: str = "action.accept",
    content_type: str | None = "application/json",
    content_encoding: str | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish ``body`` as is, persistent, and wait for the broker's confirm."""
    properties: dict[str, Any] = {"delivery_mode": 2}
    if content_type is not None:
        properties["content_type"] = content_type
    if content_encoding is not None:
        properties["content_encoding"] = content_encoding
    if headers:
        properties["application_headers"] = headers
    with channel(broker_url) as ch:
        ch.basic_publish(amqp.Message(body, **properties), exchange=EXCHANGE, routing_key=routing_key)


def publish_json(broker_url: str, message: dict[str, Any]) -> None:
    publish_raw(
        broker_url,
        json.dumps(message).encode("utf-8"),
        routing_key=f"action.{message.get('action', 'unknown')}",
    )


@dataclass(frozen=True)
class Letter:
    body: bytes
    headers: dict[str, Any]
    content_type: str | None

    def json(self) -> Any:
        return json.loads(self.body)


def take_dead_letters(broker_url: str) -> list[Letter]:
    taken: list[Letter] = []
    with channel(broker_url) as ch:
        while True:
            message = ch.basic_get(DEAD_QUEUE, no_ack=True)
            if message is None:
                return taken
            body = message.body if isinstance(message.body, bytes) else message.body.encode()
            properties = message.properties
            taken.append(
                Letter(
                    body, dict(properties.get("application_headers") or {}), properties.get("content_type")
                )
            )


def wait_for_dead_letters(broker_url: str, count: int, timeout: float = 30.0) -> list[Letter]:
    letters: list[Letter] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        letters.extend(take_dead_letters(broker_url))
        if len(letters) >= count:
            return letters
        time.sleep(0.05)
    raise AssertionError(f"expected {count} dead letters, got {len(letters)} in {timeout} s")


def kept_of(
    raw: bytes, content_type: str | None = "application/json", content_encoding: str | None = None
) -> Any:
    """What ``reservations.dead`` keeps of a refused ``raw`` body (as JSON): the parsed object,
    masked, or only the body's size and SHA-256 (workers.broker.sealing); never the bytes."""
    fate = decide(raw, content_type, content_encoding)
    assert isinstance(fate, Rejected), fate
    if fate.message is not None:
        return mask_rejected(fate.message)
    return digest_only(raw, content_type)
