"""Publisher confirms for our own publishes, and only for ours.

Turning ``confirm_publish`` on for the whole Celery app also puts the worker's event dispatcher
in confirm mode; with the threads pool, a worker thread then waits for a confirm on a connection
whose frames the consumer's event loop reads, and the worker deadlocks (seen here: every thread
stuck in ``EventDispatcher.flush``). So the app's own connections stay unconfirmed, and every
publish that carries an action (the intake's hand-off, retries, dead letters, redrive) goes
through a pool of producers on connections of their own with confirms on: a publish returns
only once RabbitMQ has the message, or raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import Celery
from kombu.messaging import Producer
from kombu.pools import ProducerPool

from workers import tracing
from workers.broker.topology import APPLY_TASK_NAME, PUBLISHED_AT_HEADER
from workers.core.redaction import display_args

# How long a publish waits for RabbitMQ's confirm before it fails (py-amqp would wait for ever,
# e.g. while a memory or disk alarm blocks publishers). Pass it to every confirmed publish.
CONFIRM_TIMEOUT = 10.0


class Publishers:
    """Confirmed producers of one Celery app, ``limit`` per process (``PUBLISH_POOL_LIMIT``).

    A thread holds one only while it publishes; a confirm from a quorum queue waits for the
    broker's disk, so throughput needs publishes in flight. A forked child builds its own pool:
    sockets do not survive ``fork()``.
    """

    def __init__(self, app: Celery, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._lock = threading.Lock()
        self._pools: dict[int, ProducerPool] = {}

    def _pool(self) -> ProducerPool:
        pid = os.getpid()
        with self._lock:
            pool = self._pools.get(pid)
            if pool is None:
                options = {**(self.app.conf.broker_transport_options or {}), "confirm_publish": True}
                connection = self.app.connection_for_write(transport_options=options)
                pool = ProducerPool(connection.Pool(limit=self.limit), limit=self.limit)
                self._pools[pid] = pool
            return pool

    def close(self) -> None:
        """Close this process's producers and their connections."""
        with self._lock:
            pool = self._pools.pop(os.getpid(), None)
        if pool is not None:
            pool.connections.force_close_all()
            pool.force_close_all()

    @contextmanager
    def confirmed(self) -> Iterator[Producer]:
        """A producer whose ``publish`` returns once RabbitMQ confirmed the message."""
        with self._pool().acquire(block=True) as producer:
            yield producer


def hand_to_apply(
    publishers: Publishers, message: Mapping[str, Any], *, countdown: int | None = None, retries: int = 0
) -> None:
    """Publish a valid wire message to the apply task (persistent, with a publisher confirm).

    The task id is the ``action_id``, so Flower finds an action by the id its producer chose.
    ``countdown`` and ``retries`` hand over a run that must be tried again later (the intake's
    own run asked for it): RabbitMQ's native delayed delivery holds it, and the task counts on
    from ``retries`` as if it had retried itself.
    """
    wire = dict(message)
    with publishers.confirmed() as producer:
        publishers.app.send_task(
            APPLY_TASK_NAME,
            args=[wire],
            task_id=str(wire["action_id"]),
            argsrepr=display_args(wire),
            kwargsrepr="{}",
            delivery_mode=2,
            producer=producer,
            # The trace goes on to the apply task (workers.tracing: empty when tracing is off).
            headers={PUBLISHED_AT_HEADER: time.time(), **tracing.headers()},
            confirm_timeout=CONFIRM_TIMEOUT,
            countdown=countdown,
            retries=retries,
        )
