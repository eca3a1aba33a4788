"""Read what landed in the dead-letter queue, with a plain AMQP client."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kombu.connection import Connection

from workers.broker.topology import DEAD_LETTER_QUEUE_NAME, dead_letter_queue


@dataclass(frozen=True)
class DeadLetter:
    body: bytes
    headers: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.body)


def drain_dead_letters(broker_url: str) -> list[DeadLetter]:
    """Take every message out of ``reservations.dead`` (declaring it if nobody has yet)."""
    taken: list[DeadLetter] = []
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        dead_letter_queue()(channel).declare()
        while True:
            message = channel.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=True)
            if message is None:
                return taken
            body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
            taken.append(DeadLetter(body, dict(message.headers or {})))
