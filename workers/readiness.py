"""A worker's readiness: the start-up checks, retried until they pass, gate the ready file and
``/readyz``; after that, ``/readyz`` checks the ledger, RabbitMQ and the consumer at each probe.

A worker whose ledger, broker or TaskRouter credentials are wrong keeps consuming (what it takes
is retried or requeued, never lost) but never says it is ready, and says why at once and again
at every retry, instead of going silent until its first message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from workers import doctor
from workers.broker.reach import reach as reach_broker
from workers.config import Settings
from workers.errors import ReservationsError
from workers.health import FAIL, OK, Check
from workers.ledger.connector import reach as reach_ledger

logger = logging.getLogger(__name__)

FIRST_PAUSE = 2.0
LONGEST_PAUSE = 30.0
PROBE_TIMEOUT = 3.0


class Readiness:
    """Runs ``checks`` in a thread until none fails, then calls ``on_ready`` once."""

    def __init__(
        self,
        settings: Settings,
        consuming: Callable[[], bool],
        on_ready: Callable[[], None],
        checks: list[tuple[str, Callable[[Settings], Check]]] | None = None,
        first_pause: float = FIRST_PAUSE,
    ) -> None:
        self._settings = settings
        self._consuming = consuming
        self._on_ready = on_ready
        self._checks = checks or [
            ("ledger", doctor.ledger),
            ("broker", doctor.broker),
            ("taskrouter", doctor.taskrouter),
        ]
        self._first_pause = first_pause
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._last: list[Check] = [Check("startup", FAIL, "the start-up checks have not finished yet")]

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        threading.Thread(target=self.run, name="readiness", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        """Check until every check passes (or :meth:`stop`); ``start`` runs it in a thread."""
        pause = self._first_pause
        while True:
            found = []
            for name, check in self._checks:
                result = doctor.guarded(name, check, self._settings)
                found.append(result)
                if result.failed:  # said at once, before the slower checks that follow
                    logger.error("not ready: %s: %s (checking again in %.0f s)", name, result.detail, pause)
            self._last = found
            if not any(c.failed for c in found):
                self._ready.set()
                logger.info("ready: %s", "; ".join(f"{c.name}: {c.detail}" for c in found))
                self._on_ready()
                return
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, LONGEST_PAUSE)

    def probe(self) -> list[Check]:
        """What ``/readyz`` reports: the start-up checks until they pass, then live ones."""
        if not self.ready:
            return list(self._last)
        return [self._live("ledger", self._ledger), self._live("broker", self._broker), self._consumer()]

    def _ledger(self) -> str:
        reach_ledger(self._settings.database_url, PROBE_TIMEOUT)
        return "reachable"

    def _broker(self) -> str:
        reach_broker(self._settings.broker_url, PROBE_TIMEOUT).release()
        return "reachable"

    def _consumer(self) -> Check:
        if self._consuming():
            return Check("consuming", OK, "the worker consumes its queues")
        return Check("consuming", FAIL, "the worker's broker connection is down: it consumes nothing")

    @staticmethod
    def _live(name: str, probe: Callable[[], str]) -> Check:
        try:
            return Check(name, OK, probe())
        except ReservationsError as exc:
            return Check(name, FAIL, str(exc))
