"""The overview's "verify result": ``ledger verify`` run in the background every so often.

A whole-ledger verify reads every row (seconds at a million), far too long for a page; the audit
API runs it on a thread of its own at start and then every ``interval`` seconds, and pages show
the latest result with its time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from workers.errors import LedgerError
from workers.ledger.models import Problem
from workers.ledger.reader import LedgerReader

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """When verify finished, how long it took, and what it found (or why it could not check)."""

    finished_at: datetime
    seconds: float
    problems: list[Problem]
    error: str | None = None

    @property
    def intact(self) -> bool:
        return self.error is None and not self.problems


class VerifyWatch:
    """Runs verify now and then every ``interval`` seconds (0: never) until stopped."""

    def __init__(self, reader: LedgerReader, interval: float) -> None:
        self._reader = reader
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.latest: VerifyResult | None = None

    @property
    def interval(self) -> float:
        return self._interval

    def run_once(self) -> VerifyResult:
        began = time.perf_counter()
        try:
            problems, error = self._reader.verify(), None
        except LedgerError as exc:
            problems, error = [], str(exc)
            logger.warning("the background ledger verify could not run: %s", exc)
        result = VerifyResult(datetime.now(UTC), time.perf_counter() - began, problems, error)
        if problems:
            logger.error("ledger verify found %d problem(s); the first: %s", len(problems), problems[0])
        self.latest = result
        return result

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="audit-verify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
