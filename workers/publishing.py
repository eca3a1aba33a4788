"""Publisher confirms for our own publishes, and only for ours.

Turning ``confirm_publish`` on for the whole Celery app also puts the worker's event dispatcher
in confirm mode; with the threads pool, a worker thread then waits for a confirm on a connection
whose frames the consumer's event loop reads, and the worker deadlocks (seen here: every thread
stuck in ``EventDispatcher.flush``). So the app's own connections stay unconfirmed, and every
publish that carries an action (enqueue, the intake's hand-off, retries, dead letters) goes
through a pool of producers on connections of their own with confirms on: a publish returns
only once RabbitMQ has the message, or raises.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from kombu.messaging import Producer
from kombu.pools import ProducerPool

# Producers (and connections) per process; a thread holds one only while it publishes. A confirm
# from a quorum queue waits for the broker's disk, so throughput needs publishes in flight.
POOL_LIMIT = int(os.environ.get("PUBLISH_POOL_LIMIT", "32"))
# How long a publish waits for RabbitMQ's confirm before it fails (py-amqp would wait for ever,
# e.g. while a memory or disk alarm blocks publishers). Pass it to every confirmed publish.
CONFIRM_TIMEOUT = 10.0

_lock = threading.Lock()
_pools: dict[tuple[int, int], ProducerPool] = {}


def _pool(app: Celery) -> ProducerPool:
    key = (id(app), os.getpid())  # a forked child builds its own: sockets do not survive fork
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            options = {**(app.conf.broker_transport_options or {}), "confirm_publish": True}
            connection = app.connection_for_write(transport_options=options)
            pool = ProducerPool(connection.Pool(limit=POOL_LIMIT), limit=POOL_LIMIT)
            _pools[key] = pool
        return pool


@contextmanager
def confirmed_producer(app: Celery) -> Iterator[Producer]:
    """A producer whose ``publish`` returns once RabbitMQ confirmed the message."""
    with _pool(app).acquire(block=True) as producer:
        yield producer
