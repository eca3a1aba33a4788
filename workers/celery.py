"""The Celery application: ``celery -A workers worker`` finds ``app`` here.

Reliability settings (design doc, "Delivery is at least once"): late acknowledgement, reject on
worker lost, prefetch 1, publisher confirms (per publish, see workers.publishing), quorum queues
with native delayed delivery for retry countdowns, results off (outcomes live in the ledger), task
events when Flower asks for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready

from workers.config import Settings
from workers.logs import on_logger_setup
from workers.topology import APPLY_EXCHANGE, APPLY_QUEUE_NAME, APPLY_ROUTING_KEY, apply_queue

APPLY_TASK_NAME = "reservations.apply"


def celery_config(settings: Settings) -> dict[str, Any]:
    heartbeat = {} if settings.broker_heartbeat is None else {"broker_heartbeat": settings.broker_heartbeat}
    return {
        **heartbeat,
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        # Publisher confirms are per publish (workers.publishing), not transport-wide: in confirm
        # mode the worker's event dispatcher deadlocks the threads pool.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
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
        "enable_utc": True,
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    celery_app = Celery("workers", set_as_current=True)
    celery_app.conf.update(celery_config(settings))
    celery_app.conf.imports = ["workers.tasks"]
    # The plain-JSON intake on reservations.actions runs inside every worker (workers/intake/).
    from workers.intake.step import install as install_intake

    install_intake(celery_app)
    return celery_app


# LOG_FORMAT=json (the default off a terminal): Celery's handlers, our JSON formatter (workers/logs.py).
after_setup_logger.connect(on_logger_setup, weak=False)
after_setup_task_logger.connect(on_logger_setup, weak=False)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _announce_ready(sender: Any = None, **_: Any) -> None:
    """Serve /metrics (WORKER_METRICS_PORT), then touch WORKER_READY_FILE: the worker consumes."""
    from workers import metrics

    metrics.serve(getattr(sender, "pool", None))
    path = os.environ.get("WORKER_READY_FILE")
    if path:
        Path(path).touch()


app = create_app()
