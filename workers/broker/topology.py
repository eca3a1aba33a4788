"""The broker topology: every exchange, queue, task name and header the system puts on the wire, named once.

Producers in any language publish to the ``reservations`` exchange (design doc, wire contract);
the apply task's own queue is quorum, so Celery's native delayed delivery parks retry countdowns
in the broker instead of holding them unacknowledged in a worker (RabbitMQ's ``consumer_timeout``
would otherwise close the channel under a long countdown). Rejected and exhausted messages go to
the dead-letter exchange with their reason in a header.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

# The wire contract, version 1.
ACTIONS_EXCHANGE = Exchange("reservations", type="topic", durable=True)
ACTIONS_QUEUE_NAME = "reservations.actions"
ACTIONS_ROUTING_PATTERN = "action.#"

# Dead letters.
DEAD_LETTER_EXCHANGE = Exchange("reservations.dlx", type="fanout", durable=True)
DEAD_LETTER_QUEUE_NAME = "reservations.dead"
REASON_HEADER = "x-reservations-reason"
ACTION_ID_HEADER = "x-reservations-action-id"
OUTCOME_HEADER = "x-reservations-outcome"
# Set on rejected input: a stable code for the reason (too_large, invalid_json, unknown_field, ...).
REJECT_CODE_HEADER = "x-reservations-reject-code"

# The Celery task that applies an action, and its queue (topic, so native delayed delivery can
# route to it). The task id is the action_id.
APPLY_TASK_NAME = "reservations.apply"
APPLY_EXCHANGE = Exchange("reservations.apply", type="topic", durable=True)
APPLY_QUEUE_NAME = "reservations.apply"
APPLY_ROUTING_KEY = "reservations.apply"
# After this many deliveries (a worker dying on the same message again and again), RabbitMQ
# dead-letters the message instead of redelivering it forever.
DELIVERY_LIMIT = 20
# Set by RabbitMQ on every redelivery from a quorum queue: how many deliveries came before.
DELIVERY_COUNT_HEADER = "x-delivery-count"

# A header of the apply message: when it was published (seconds since the epoch, the publisher's
# clock), for the workers' queue-lag metric. Celery's messages carry no publish time of their own.
PUBLISHED_AT_HEADER = "published_at"

_QUORUM = {"x-queue-type": "quorum"}


def delivery_count(value: object) -> int:
    """The ``x-delivery-count`` header's value as a count (0 when absent or malformed)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def routing_key_for(action: str) -> str:
    """The routing key producers use for an action, e.g. ``action.accept``."""
    return f"action.{action}"


def _work_queue(name: str, exchange: Exchange, routing_key: str) -> Queue:
    """A quorum queue whose poison messages RabbitMQ dead-letters after ``DELIVERY_LIMIT`` deliveries."""
    arguments = {
        **_QUORUM,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
        "x-delivery-limit": DELIVERY_LIMIT,
    }
    return Queue(name, exchange, routing_key=routing_key, durable=True, queue_arguments=arguments)


def actions_queue() -> Queue:
    return _work_queue(ACTIONS_QUEUE_NAME, ACTIONS_EXCHANGE, ACTIONS_ROUTING_PATTERN)


def apply_queue() -> Queue:
    return _work_queue(APPLY_QUEUE_NAME, APPLY_EXCHANGE, APPLY_ROUTING_KEY)


def dead_letter_queue() -> Queue:
    return Queue(DEAD_LETTER_QUEUE_NAME, DEAD_LETTER_EXCHANGE, durable=True, queue_arguments=dict(_QUORUM))
