"""A TaskRouter event as a ledger transition, and many of them made durable in few commits.

:class:`GroupCommitter` is how the events API answers a callback only once its event is durable
without a commit per callback: requests hand their transitions to a queue; each of a few threads
takes what has gathered (up to ``batch_max``), appends it in one transaction and one round trip
(``PostgresLedgerWriter.append_transitions``) and then wakes every request of the batch. Under
load batches grow, so commits (and WAL flushes) stay few; idle, a lone callback commits at once.
A batch that fails is rolled back whole and retried one transition at a time, so one bad event
fails only its own request.

Each thread has its own queue, and a reservation's transitions always go to the same one:
TaskRouter reports a reservation's changes milliseconds apart (created, accepted, wrapup), and
two batches holding them would wait on each other's chain lock until commit, so that under a
backlog the batches ran one after the other (ops/bench_events.py, open loop at 1,000/s).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from workers.core.taskrouter_events import ReservationEvent
from workers.errors import LedgerError, ReservationsError
from workers.ledger.events import Transition
from workers.ledger.models import Source, TransitionResult

logger = logging.getLogger(__name__)


def transition_of(event: ReservationEvent) -> Transition:
    """The transition an event reports: ``source`` event, no ETag (events carry none), and the
    event's type, key, time and channel in ``detail``."""
    return Transition(
        event.reservation_sid,
        from_status=None,
        to_status=event.to_status.value,
        etag_before=None,
        etag_after=None,
        workspace_sid=event.workspace_sid,
        task_sid=event.task_sid,
        worker_sid=event.worker_sid,
        detail=event.detail,
        source=Source.EVENT,
    )


class TransitionsWriter(Protocol):
    def append_transitions(self, events: Sequence[Transition]) -> list[TransitionResult]: ...


_Pending = tuple[Transition, "Future[TransitionResult]"]


class GroupCommitter:
    """Commits submitted transitions in batches on ``threads`` threads; see the module's doc."""

    def __init__(self, writer: TransitionsWriter, *, batch_max: int = 200, threads: int = 4) -> None:
        self._writer = writer
        self._batch_max = batch_max
        self._queues: list[queue.SimpleQueue[_Pending | None]] = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(mine,), name=f"events-commit-{n}", daemon=True)
            for n, mine in enumerate(self._queues)
        ]
        self._stopped = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, transition: Transition) -> Future[TransitionResult]:
        """A future that holds the transition's result once it is committed (or the LedgerError)."""
        future: Future[TransitionResult] = Future()
        if self._stopped:
            future.set_exception(LedgerError("the events API is shutting down"))
        else:
            self._queues[hash(transition.reservation_sid) % len(self._queues)].put((transition, future))
        return future

    def stop(self) -> None:
        """Commit what is queued, then stop the threads."""
        self._stopped = True
        for mine in self._queues:
            mine.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self, mine: queue.SimpleQueue[_Pending | None]) -> None:
        while True:
            first = mine.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    item = mine.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    mine.put(None)  # our stop signal: finish this batch first
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = self._writer.append_transitions([transition for transition, _ in batch])
        except ReservationsError as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            logger.warning(
                "a batch of %d event transitions failed (%s): committing them one by one", len(batch), exc
            )
            for pending in batch:
                self._commit([pending])
            return
        except BaseException as exc:  # pragma: no cover - never leave a request waiting forever
            for _, future in batch:
                future.set_exception(exc)
            raise
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)
