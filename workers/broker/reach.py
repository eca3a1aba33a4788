"""Is RabbitMQ there, and does it hold our topology? What ``doctor`` and a starting worker ask.

Passive declarations prove that each exchange and queue of :mod:`workers.broker.topology` exists
without creating it; a second, ordinary declaration with our arguments then proves they match
(quorum, dead-letter exchange, delivery limit): RabbitMQ refuses it (406) when they differ, and
it changes nothing when they agree.
"""

from __future__ import annotations

from collections.abc import Callable

from amqp.exceptions import AccessRefused, ChannelError, NotFound, PreconditionFailed
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from workers.broker.topology import (
    ACTIONS_EXCHANGE,
    APPLY_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    actions_queue,
    apply_queue,
    dead_letter_queue,
)
from workers.errors import BrokerUnavailable, unreachable


def where(broker_url: str) -> str:
    """``host:port/vhost`` of a broker URL, without its user or password."""
    connection = Connection(broker_url)
    return f"{connection.hostname}:{connection.port or 5672}/{connection.virtual_host or '/'}"


def reach(broker_url: str, timeout: float = 5.0) -> Connection:
    """An open connection to ``broker_url``, or :class:`BrokerUnavailable` at once (down, wrong
    host or port, credentials refused, no such virtual host): the caller closes it."""
    connection = Connection(broker_url, connect_timeout=timeout)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as exc:  # kombu raises many kinds: refused, access refused, timed out, ...
        connection.release()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BrokerUnavailable(unreachable("RabbitMQ", where(broker_url), reason)) from exc
    return connection


def topology_problems(broker_url: str, timeout: float = 5.0) -> list[str]:
    """What is missing or different in the broker's topology (empty: all as declared)."""
    with reach(broker_url, timeout) as connection:
        problems: list[str] = []
        for exchange in (ACTIONS_EXCHANGE, APPLY_EXCHANGE, DEAD_LETTER_EXCHANGE):
            problems += _declared(connection, f"exchange {exchange.name}", exchange)
        for queue in (actions_queue(), apply_queue(), dead_letter_queue()):
            problems += _declared(connection, f"queue {queue.name}", queue)
        return problems


def _declared(connection: Connection, what: str, entity: Exchange | Queue) -> list[str]:
    """``entity`` exists, with our arguments; each declaration on a channel of its own (RabbitMQ
    closes the channel of a declaration it refuses)."""
    checks: list[tuple[str, Callable[[Exchange | Queue], object]]] = [
        ("missing", lambda bound: _declare(bound, passive=True)),
        ("declared with other arguments than ours", lambda bound: _declare(bound, passive=False)),
    ]
    for problem, declare in checks:
        with connection.channel() as channel:
            try:
                declare(entity.bind(channel))
            except NotFound:
                return [f"{what} {problem}"]
            except PreconditionFailed as exc:
                return [f"{what} {problem}: {exc.reply_text}"]
            except AccessRefused as exc:
                return [f"{what}: access refused: {exc.reply_text}"]
            except ChannelError as exc:
                return [f"{what}: {exc}"]
    return []


def _declare(bound: Exchange | Queue, *, passive: bool) -> object:
    if isinstance(bound, Queue):
        return bound.queue_declare(passive=passive)  # the queue alone, not its exchange and binding
    return bound.declare(passive=passive)
