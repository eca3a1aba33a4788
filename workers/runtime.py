"""The composition root: build the ledger, the gateways and the applier once per worker process.

Resources are created lazily, on first use inside the process that uses them, so a prefork
parent never hands a database pool or an HTTP session across ``fork()``. The twilio client is
not documented as thread-safe, so each thread (or greenlet) gets its own gateway.
"""

from __future__ import annotations

import os
import threading

from workers.applier import ActionApplier
from workers.config import Settings
from workers.ledger.writer import LOCK_TIMEOUT, PostgresLedgerWriter
from workers.taskrouter.gateway import TaskRouterGateway

# One connection per concurrently applied action (it holds the reservation's lock and carries the
# action's writes), plus a few for the rest; psycopg_pool opens them only as they are needed.
DEFAULT_LEDGER_POOL_MAX = 36
# No ledger statement of a run waits longer (Celery enforces no time limit on the threads pool);
# the longest legitimate one is the wait for the reservation's lock.
LEDGER_STATEMENT_TIMEOUT = LOCK_TIMEOUT + 10.0


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = settings.retry
        self._lock = threading.Lock()
        self._ledger: PostgresLedgerWriter | None = None
        self._local = threading.local()

    @property
    def ledger(self) -> PostgresLedgerWriter:
        with self._lock:
            if self._ledger is None:
                max_size = int(os.environ.get("LEDGER_POOL_MAX", DEFAULT_LEDGER_POOL_MAX))
                self._ledger = PostgresLedgerWriter.from_settings(
                    self.settings, min_size=1, max_size=max_size, statement_timeout=LEDGER_STATEMENT_TIMEOUT
                )
            return self._ledger

    def gateway(self) -> TaskRouterGateway:
        gateway: TaskRouterGateway | None = getattr(self._local, "gateway", None)
        if gateway is None:
            gateway = TaskRouterGateway.from_settings(self.settings)
            self._local.gateway = gateway
        return gateway

    def applier(self) -> ActionApplier:
        return ActionApplier(self.ledger, self.gateway(), self.policy)

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
