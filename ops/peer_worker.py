"""The naive worker that ``ops/bench_peer.py`` races against: what a team writes in an afternoon
instead of adopting this project.

One Celery task, written plainly with Celery's defaults (a classic queue, no confirms, prefetch
multiplier 4) plus late acknowledgement: fetch the reservation with the twilio SDK (its default
``requests`` HTTP client), update it with ``If-Match``, retry a 412 through Celery, INSERT one audit
row. No validation, no dead letters, no ledger, no exactly-once. A pool of 8 PostgreSQL
connections per process for the audit rows. Run by the benchmark as
``celery -A peer_worker worker`` with ``ops/`` on ``PYTHONPATH``; it reads its settings from the
environment the benchmark gives it (``CELERY_BROKER_URL``, ``DATABASE_URL``, the twilio ones).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.signals import worker_ready
from psycopg_pool import ConnectionPool
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

TASK_NAME = "peer.accept"
QUEUE = "peer"
AUDIT_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS peer_audit (
    id bigserial PRIMARY KEY,
    action_id uuid NOT NULL,
    reservation_sid text NOT NULL,
    from_status text,
    to_status text NOT NULL,
    etag_before text,
    etag_after text,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

app = Celery("peer", broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)
_local = threading.local()


def _client() -> Client:
    client: Client | None = getattr(_local, "client", None)
    if client is None:
        client = Client(os.environ["TWILIO_ACCOUNT_SID"], os.environ["TWILIO_AUTH_TOKEN"])
        client.taskrouter.base_url = os.environ["TASKROUTER_BASE_URL"]
        _local.client = client
    return client


_pool_lock = threading.Lock()
_pools: list[ConnectionPool[Any]] = []


def _db() -> ConnectionPool[Any]:
    """A small pool per process (the server's 100 connections are shared with the other side)."""
    with _pool_lock:
        if not _pools:
            _pools.append(
                ConnectionPool(
                    os.environ["DATABASE_URL"], min_size=1, max_size=8, kwargs={"autocommit": True}
                )
            )
        return _pools[0]


@app.task(bind=True, name=TASK_NAME, max_retries=10)  # type: ignore[untyped-decorator]  # celery: no types
def accept(self: Task, action_id: str, workspace_sid: str, task_sid: str, reservation_sid: str) -> str:
    workspace = _client().taskrouter.v1.workspaces(workspace_sid)
    reservation = workspace.tasks(task_sid).reservations(reservation_sid)
    fetched = reservation.fetch_with_http_info()
    etag = fetched.headers.get("ETag")
    try:
        updated = reservation.update_with_http_info(reservation_status="accepted", if_match=etag)
    except TwilioRestException as exc:
        if exc.status == 412:
            raise self.retry(exc=exc, countdown=0.1) from exc
        raise
    with _db().connection() as db:
        db.execute(
            "INSERT INTO peer_audit"
            " (action_id, reservation_sid, from_status, to_status, etag_before, etag_after)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                action_id,
                reservation_sid,
                fetched.data.reservation_status,
                updated.data.reservation_status,
                etag,
                updated.headers.get("ETag"),
            ),
        )
    return str(updated.data.reservation_status)


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery ships no types
def _announce_ready(**_: Any) -> None:
    """The benchmark's harness (``WorkerProcess``) waits for this file."""
    ready = os.environ.get("WORKER_READY_FILE")
    if ready:
        Path(ready).touch()
