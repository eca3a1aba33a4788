"""The group commit's batches, without a database: a reservation's transitions stay on one thread."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from workers.core.sids import new_sid
from workers.events.recording import GroupCommitter
from workers.ledger.events import Transition
from workers.ledger.models import Source, TransitionResult


class _Writer:
    """Notes which thread committed each reservation's transitions, in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[str, set[str]] = {}
        self.order: dict[str, list[str]] = {}

    def append_transitions(self, events: Sequence[Transition]) -> list[TransitionResult]:
        with self.lock:
            for event in events:
                self.threads.setdefault(event.reservation_sid, set()).add(threading.current_thread().name)
                self.order.setdefault(event.reservation_sid, []).append(event.to_status)
        return [TransitionResult(n, None, None, appended=True) for n in range(len(events))]


def test_a_reservations_transitions_are_committed_by_one_thread_in_order() -> None:
    """Two batches holding one reservation's transitions would wait on its chain lock until the
    other commits: each reservation belongs to one of the threads, which keeps their order too."""
    writer = _Writer()
    group = GroupCommitter(writer, batch_max=7, threads=4)
    group.start()
    sids = [new_sid("WR") for _ in range(40)]
    life = ("pending", "accepted", "wrapping", "completed")
    futures = [
        group.submit(Transition(sid, None, status, None, None, source=Source.EVENT))
        for status in life
        for sid in sids
    ]
    for future in futures:
        assert future.result(timeout=10).appended
    group.stop()
    assert all(len(names) == 1 for names in writer.threads.values())
    assert len(set().union(*writer.threads.values())) > 1
    assert all(writer.order[sid] == list(life) for sid in sids)
