"""What the console's overview shows that no index can answer quickly, computed on threads of
the audit API's own and shown with its time:

* the verify result: ``ledger verify`` reads every row (seconds at a million), at start and then
  every ``AUDIT_VERIFY_INTERVAL`` seconds;
* the outcome counts of the last day and the actions needing attention: they read every action
  settled that day (a quarter of a million at a million rows), every :data:`OVERVIEW_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from workers.errors import LedgerError
from workers.ledger.models import ActionRecord, OutcomeCount, Problem
from workers.ledger.reader import LedgerReader

logger = logging.getLogger(__name__)

OVERVIEW_SECONDS = 30.0
# Outcomes that want a person: the update may have landed (indeterminate), or it never will
# without someone fixing something and redriving (failed, dead_lettered).
ATTENTION = ("indeterminate", "failed", "dead_lettered")
ATTENTION_SHOWN = 20
# The day's outcomes in 5-minute buckets: the hour's chart as they are, the day's twelve at a time.
DAY_SECONDS, BUCKET_SECONDS = 86400, 300


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


class _Periodic:
    """Calls ``run_once`` now and then every ``interval`` seconds (0: never) until stopped."""

    def __init__(self, reader: LedgerReader, interval: float) -> None:
        self._reader = reader
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return self._interval

    def run_once(self) -> object:  # pragma: no cover - each kind says what it runs
        raise NotImplementedError

    def start(self) -> None:
        if self._interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name=f"audit-{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except LedgerError as exc:
                logger.warning("%s could not run: %s", type(self).__name__, exc)
            self._stop.wait(self._interval)


@dataclass(frozen=True, slots=True)
class Overview:
    """The last day's outcomes (5-minute buckets back from ``counted_at``) and the latest actions
    that ended with an outcome of :data:`ATTENTION` and were never redriven."""

    counted_at: datetime
    counts: list[OutcomeCount]
    attention: list[ActionRecord]


class OverviewWatch(_Periodic):
    """Counts the overview every ``interval`` seconds; a page before the first count waits for it."""

    def __init__(self, reader: LedgerReader, interval: float = OVERVIEW_SECONDS) -> None:
        super().__init__(reader, interval)
        self._latest: Overview | None = None

    def run_once(self) -> Overview:
        counts = self._reader.outcome_counts(DAY_SECONDS, BUCKET_SECONDS)
        attention = self._reader.attention(ATTENTION, ATTENTION_SHOWN)
        self._latest = Overview(datetime.now(UTC), counts, attention)
        return self._latest

    def latest(self) -> Overview:
        return self._latest if self._latest is not None else self.run_once()


class VerifyWatch(_Periodic):
    """Runs ``ledger verify`` now and then every ``interval`` seconds (0: never)."""

    def __init__(self, reader: LedgerReader, interval: float) -> None:
        super().__init__(reader, interval)
        self.latest: VerifyResult | None = None

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
