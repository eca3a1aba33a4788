"""Publish a message to the dead-letter queue, with the reason in a header.

We publish it ourselves rather than rejecting the delivery, because a broker-side dead-letter
carries no reason of ours. Publisher confirms make the publish safe to acknowledge after.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from workers import metrics
from workers.broker.publishing import CONFIRM_TIMEOUT, Publishers
from workers.broker.topology import (
    ACTION_ID_HEADER,
    DEAD_LETTER_EXCHANGE,
    OUTCOME_HEADER,
    REASON_HEADER,
    dead_letter_queue,
)

# Headers are for people reading the queue in RabbitMQ's UI: keep them short.
MAX_REASON_LENGTH = 1000


def publish_dead_letter(
    publishers: Publishers,
    body: bytes | str | Mapping[str, Any],
    reason: str,
    *,
    action_id: str | None = None,
    content_type: str = "application/json",
    extra_headers: Mapping[str, Any] | None = None,
) -> None:
    """Send ``body`` as it was (bytes), or as JSON, to ``reservations.dead``."""
    if isinstance(body, Mapping):
        payload: bytes | str = json.dumps(body, separators=(",", ":"))
        content_type = "application/json"
    else:
        payload = body
    headers: dict[str, Any] = {REASON_HEADER: reason[:MAX_REASON_LENGTH], **(extra_headers or {})}
    if action_id is not None:
        headers[ACTION_ID_HEADER] = action_id
    with publishers.confirmed() as producer:
        producer.publish(
            payload,
            exchange=DEAD_LETTER_EXCHANGE,
            routing_key="",
            headers=headers,
            content_type=content_type,
            content_encoding="utf-8" if isinstance(payload, str) else "binary",
            delivery_mode=2,
            declare=[dead_letter_queue()],
            retry=True,
            confirm_timeout=CONFIRM_TIMEOUT,
        )
    metrics.dead_letter(str(headers.get(OUTCOME_HEADER, "unknown")))
