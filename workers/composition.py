"""The composition root: one place builds the Celery app and everything its tasks use.

``create_app(settings)`` builds a :class:`ReservationsApp` with its :class:`Runtime` (ledger,
TaskRouter gateways, confirmed publishers, retry policy), registers the apply task, installs the
plain-JSON intake and connects the logging and readiness hooks. Nothing else reads settings or
builds resources: the task and the intake reach the runtime through their app, and the CLI and
replay build an app only when they publish.

Resources are created lazily, on first use inside the process that uses them, so a prefork
parent never hands a database pool or an HTTP session across ``fork()``. The twilio client is
not documented as thread-safe, so each thread (or greenlet) gets its own gateway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_init,
    worker_ready,
    worker_shutdown,
)

from workers import metrics, tracing
from workers.apply import task
from workers.apply.applier import ActionApplier
from workers.broker import intake
from workers.broker.guard import BodyFilter
from workers.broker.publishing import Publishers, hand_to_apply
from workers.broker.sealing import keyring
from workers.broker.topology import (
    APPLY_EXCHANGE,
    APPLY_QUEUE_NAME,
    APPLY_ROUTING_KEY,
    APPLY_TASK_NAME,
    apply_queue,
)
from workers.config import Settings
from workers.core.action import Action
from workers.core.governor import BudgetPolicy
from workers.ledger.leases import PostgresLeases
from workers.ledger.writer import LOCK_TIMEOUT, PostgresLedgerWriter
from workers.logs import logger_setup
from workers.readiness import Readiness
from workers.taskrouter.gateway import TaskRouterGateway
from workers.taskrouter.governor import Governor, budget_ceiling, default_floor

# No ledger statement of a run waits longer (Celery enforces no time limit on the threads pool);
# the longest legitimate one is the wait for the reservation's lock.
LEDGER_STATEMENT_TIMEOUT = LOCK_TIMEOUT + 10.0
# The intake's writes take milliseconds: a message is requeued rather than held while the ledger hangs.
INTAKE_STATEMENT_TIMEOUT = 10.0


class Runtime:
    """What one worker process uses, built once from its settings."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.policy = settings.retry
        self.publishers = Publishers(app, settings.publish_pool_limit)
        # Seals the sensitive parameters of dead letters (None: they are left out).
        self.dead_letter_keys = keyring(settings.dead_letter_key)
        self._lock = threading.Lock()
        self._ledger: PostgresLedgerWriter | None = None
        self._local = threading.local()
        self._governor_lock = threading.Lock()
        self._governor: Governor | None = None

    @property
    def ledger(self) -> PostgresLedgerWriter:
        """The apply task's ledger: one connection per action in flight (it holds the lock)."""
        with self._lock:
            if self._ledger is None:
                self._ledger = PostgresLedgerWriter.from_settings(
                    self.settings,
                    min_size=1,
                    max_size=self.settings.ledger_pool_max,
                    statement_timeout=LEDGER_STATEMENT_TIMEOUT,
                )
            return self._ledger

    def gateway(self) -> TaskRouterGateway:
        gateway: TaskRouterGateway | None = getattr(self._local, "gateway", None)
        if gateway is None:
            gateway = TaskRouterGateway.from_settings(self.settings, governor=self.governor())
            self._local.gateway = gateway
        return gateway

    def governor(self) -> Governor | None:
        """This process's share of the account-wide TaskRouter budget, leased on first use
        (None: TASKROUTER_MAX_CONCURRENCY=0)."""
        settings = self.settings
        if not settings.taskrouter_max_concurrency:
            return None
        with self._governor_lock:
            if self._governor is None:
                ceiling = budget_ceiling(
                    settings.taskrouter_max_concurrency, settings.taskrouter_reserved_concurrency
                )
                store = PostgresLeases(
                    settings.database_url,
                    settings.twilio_credentials().account_sid,
                    BudgetPolicy(ceiling, floor=default_floor(ceiling)),
                    ttl=settings.taskrouter_lease_seconds,
                )
                governor = Governor(store, slot_wait=settings.taskrouter_slot_wait)
                governor.start()
                self._governor = governor
            return self._governor

    def applier(self) -> ActionApplier:
        return ActionApplier(self.ledger, self.gateway(), self.policy)

    def intake(
        self, hub: Any | None, events: intake.Events = lambda: None, concurrency: int | None = None
    ) -> intake.Intake:
        """The intake of one consumer: threads that apply accepted actions themselves (as many as
        the worker's concurrency, at least ``INTAKE_THREADS``) and give their acknowledgements back
        to the consumer's event loop (``hub``); without a loop (the gevent and eventlet pools run
        none) the consumer handles each message itself and hands accepted actions to the apply
        task. Its own ledger pool (closed with it) records refusals and hand-offs; applying uses the
        apply task's (``LEDGER_POOL_MAX``)."""
        threads = self.settings.intake_threads if hub is not None else 0
        if threads:
            threads = max(threads, concurrency or 0)

        def open_ledger() -> PostgresLedgerWriter:
            return PostgresLedgerWriter.from_settings(
                self.settings,
                min_size=1,
                max_size=max(2, self.settings.intake_threads),
                statement_timeout=INTAKE_STATEMENT_TIMEOUT,
            )

        on_loop = hub.call_soon if hub is not None else intake.at_once
        return intake.Intake(
            open_ledger,
            self.publishers,
            threads=threads,
            on_loop=on_loop,
            dead_letter_keys=self.dead_letter_keys,
            prefetch=max(self.settings.intake_prefetch, threads),
            applying=task.ArrivalApply(self.applier, self.publishers, self.dead_letter_keys)
            if threads
            else None,
            events=events,
        )

    def close(self) -> None:
        """Close what this process opened: the ledger's pool and the confirmed publishers."""
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
        self.close_governor()
        self.publishers.close()

    def close_governor(self) -> None:
        """Give this process's share of the TaskRouter budget back at once (else it expires)."""
        with self._governor_lock:
            if self._governor is not None:
                self._governor.close()
                self._governor = None


class ReservationsApp(Celery):  # type: ignore[misc]  # celery ships no types
    """The Celery app, carrying its process's :class:`Runtime`."""

    runtime: Runtime

    def enqueue(self, action: Action) -> None:
        """Hand ``action`` straight to the apply task (persistent, confirmed), skipping the intake:
        for callers that already hold a valid action (replay, tests, benchmarks)."""
        hand_to_apply(self.runtime.publishers, action.to_message())

    def close(self) -> None:
        """Close the runtime's pools, then Celery's own connections."""
        self.runtime.close()
        super().close()


def create_app(settings: Settings) -> ReservationsApp:
    app = ReservationsApp("workers", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.runtime = Runtime(settings, app)
    task.register(app)
    intake.install(app)
    # LOG_FORMAT=json (the default off a terminal): Celery's handlers, our JSON formatter. Signals
    # are global: one receiver per process, whichever app is built first.
    on_logger_setup = _withholding_bodies(logger_setup(settings.log_format, settings.log_level))
    after_setup_logger.connect(on_logger_setup, weak=False, dispatch_uid="reservations.logs")
    after_setup_task_logger.connect(on_logger_setup, weak=False, dispatch_uid="reservations.task-logs")
    worker_ready.connect(_announce_ready, weak=False, dispatch_uid="reservations.ready")
    worker_shutdown.connect(_give_back_share, weak=False, dispatch_uid="reservations.governor")
    # Tracing (OTEL_*): set up in the worker's main process before a prefork pool forks.
    worker_init.connect(_start_tracing, weak=False, dispatch_uid="reservations.tracing")
    worker_shutdown.connect(_flush_traces, weak=False, dispatch_uid="reservations.tracing-flush")
    return app


SERVICE_NAME = "reservation-workers"


def _start_tracing(sender: Any = None, **_: Any) -> None:
    runtime: Runtime | None = getattr(getattr(sender, "app", None), "runtime", None)
    if runtime is not None:
        settings = runtime.settings
        tracing.configure(settings.traces_exporter, SERVICE_NAME, settings.otlp_traces_endpoint)


def _flush_traces(**_: Any) -> None:
    tracing.flush()


def _withholding_bodies(receiver: Callable[..., None]) -> Callable[..., None]:
    """``receiver``, then :class:`~workers.broker.guard.BodyFilter` on every handler of the logger:
    Celery's lines that print message bodies keep their first words only."""

    def on_logger_setup(logger: logging.Logger, **kwargs: Any) -> None:
        receiver(logger=logger, **kwargs)
        for handler in logger.handlers:
            if not any(isinstance(f, BodyFilter) for f in handler.filters):
                handler.addFilter(BodyFilter())

    return on_logger_setup


def _announce_ready(sender: Any = None, **_: Any) -> None:
    """Serve /metrics, /healthz and /readyz (WORKER_METRICS_PORT), then run the start-up checks
    (workers.readiness) in a thread: WORKER_READY_FILE is touched only once they pass."""
    app = getattr(sender, "app", None)
    runtime: Runtime | None = getattr(app, "runtime", None)
    if runtime is None:
        return
    settings = runtime.settings

    def consuming() -> bool:
        connection = getattr(sender, "connection", None)
        return bool(getattr(connection, "connected", False))

    def on_ready() -> None:
        if settings.worker_ready_file:
            Path(settings.worker_ready_file).touch()

    readiness = Readiness(settings, consuming, on_ready)
    metrics.serve(
        settings.worker_metrics_port,
        getattr(sender, "pool", None),
        settings.prometheus_multiproc_dir,
        ready=readiness.probe,
    )
    readiness.start()


def _give_back_share(sender: Any = None, **_: Any) -> None:
    """A worker that stops (SIGTERM, after its warm shutdown) gives its TaskRouter share back."""
    runtime: Runtime | None = getattr(getattr(sender, "app", None), "runtime", None)
    if runtime is not None:
        runtime.close_governor()


def celery_config(settings: Settings) -> dict[str, Any]:
    """Reliability settings (design doc, "Delivery is at least once"): late acknowledgement, reject
    on worker lost, prefetch 1, publisher confirms (per publish, see workers.broker.publishing),
    quorum queues with native delayed delivery for retry countdowns, results off (outcomes live in
    the ledger), task events when Flower asks for them."""
    heartbeat = {} if settings.broker_heartbeat is None else {"broker_heartbeat": settings.broker_heartbeat}
    return {
        **heartbeat,
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Publisher confirms are per publish (workers.broker.publishing), not transport-wide: in
        # confirm mode the worker's event dispatcher deadlocks the threads pool.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task that raises is never acknowledged away: the applier turns every error of a run
        # into a retry or an outcome, so this only guards against a bug of ours (the message is
        # then rejected to reservations.dead by the queue's dead-letter exchange, not dropped).
        "task_acks_on_failure_or_timeout": False,
        "worker_prefetch_multiplier": 1,
        "worker_detect_quorum_queues": True,
        "task_queues": [apply_queue()],
        "task_default_queue": APPLY_QUEUE_NAME,
        "task_default_exchange": APPLY_EXCHANGE.name,
        "task_default_exchange_type": APPLY_EXCHANGE.type,
        "task_default_routing_key": APPLY_ROUTING_KEY,
        "task_routes": {
            APPLY_TASK_NAME: {
                "queue": APPLY_QUEUE_NAME,
                "exchange": APPLY_EXCHANGE.name,
                "routing_key": APPLY_ROUTING_KEY,
            }
        },
        "task_create_missing_queues": False,
        # An attempt is a fetch and an update with a 10 s HTTP time-out each, plus ledger writes.
        # Celery enforces these with the prefork and gevent pools, not with threads (our default):
        # there every wait of a run is bounded on its own (HTTP connect and read 10 s each, the
        # reservation's lock 30 s, any ledger statement 40 s, a publisher confirm 10 s).
        "task_soft_time_limit": 60,
        "task_time_limit": 90,
        # Task events cost about 15% of throughput (three publishes per task), so they are off
        # until someone watches: Flower turns them on in every worker when it starts (its
        # default), and `celery -A workers control enable_events` does it by hand.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        # Refuses, unprinted, any message of the apply queue but a JSON apply task (Celery's own
        # consumer prints whole bodies, secrets included, and dead-letters them in clear).
        "worker_consumer": "workers.broker.guard:GuardedConsumer",
        "enable_utc": True,
    }
