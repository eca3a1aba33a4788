"""The account-wide TaskRouter concurrency governor: a process's share of the fleet's budget.

Twilio refuses an account's requests beyond its concurrency limit (429, error 20429). Each worker
process leases a share of one account-wide budget (``TASKROUTER_MAX_CONCURRENCY`` less the share
reserved for other applications) and admits its own requests against that share with a local
semaphore, so a request costs a lock and a counter, never a round trip. A heartbeat thread renews
the lease about once a second (sooner when requests wait or a 429 arrived) through a
:class:`LeaseStore` (``workers.ledger.leases`` in PostgreSQL), reporting the process's demand
and its 429s; the pure core (``workers.core.governor``) moves the budget and splits it.

Never a deadlock: a slot is held for one HTTP call only (no lock of ours is taken while holding
one), and the wait for a slot is bounded (``TASKROUTER_SLOT_WAIT``): a run that holds its
reservation's lock gives up with :class:`~workers.errors.SlotUnavailable` and is retried later.
A process that dies stops renewing; its lease expires and its share goes to the others. A live
process whose renewal is late stops admitting before its lease can expire (``LEASE_USE``), and a
share being given back stays leased until the process has shrunk to its new one.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from workers import metrics
from workers.core.governor import Lease, Report
from workers.errors import LedgerError, SlotUnavailable

logger = logging.getLogger("workers.taskrouter.governor")

# What a process asks for before it has measured its demand: as much as fairness gives it.
UNKNOWN_DEMAND = 1 << 16
# A process asks for the most it needed over its last few heartbeats, not at the last one alone:
# a busy fleet's demands then stay above their fair shares, the split stays even, and no share
# is stranded while the leases move slots from one process to another.
DEMAND_MEMORY = 4
# A process admits requests under its lease for this part of the lease's time, counted from when
# it asked for it (the database counts from later): the calls in flight then land before the
# database lets the lease expire and hands its share to another process.
LEASE_USE = 0.8


class LeaseStore(Protocol):
    """Where the fleet's leases live: :class:`workers.ledger.leases.PostgresLeases`."""

    ttl: float

    def heartbeat(self, report: Report) -> Lease: ...

    def drop(self, holder: str) -> None: ...

    def close(self) -> None: ...


class Slots:
    """A semaphore whose size the heartbeat changes and that admits nobody once the lease behind
    it has lapsed (``valid_until`` on ``clock``); it also remembers the peak demand (requests in
    flight plus waiting) since it was last asked, which is what the process leases for."""

    def __init__(self, limit: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ready = threading.Condition(threading.Lock())
        self._clock = clock
        self.limit = limit
        self.valid_until = math.inf
        self.in_flight = 0
        self.waiting = 0
        self._peak = 0
        self._draining = False

    def _open(self) -> bool:
        return self.in_flight < self.limit and self._clock() < self.valid_until

    def acquire(self, timeout: float, on_wait: threading.Event | None = None) -> float | None:
        """Take a slot: the seconds waited (0.0 at once), or None when none came in ``timeout``."""
        with self._ready:
            if self._open():
                self.in_flight += 1
                self._peak = max(self._peak, self.in_flight + self.waiting)
                return 0.0
            self.waiting += 1
            self._peak = max(self._peak, self.in_flight + self.waiting)
            if on_wait is not None:
                on_wait.set()  # ask the heartbeat for a bigger share now
            started = time.monotonic()
            deadline = started + timeout
            try:
                while not self._open():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._ready.wait(remaining)
                self.in_flight += 1
                return time.monotonic() - started
            finally:
                self.waiting -= 1

    def release(self) -> None:
        with self._ready:
            self.in_flight -= 1
            if self._draining:
                self._ready.notify_all()  # the closing thread waits among the others
            elif self.waiting:
                self._ready.notify()

    def resize(self, limit: int, valid_until: float = math.inf) -> None:
        """A new share, to be used until ``valid_until`` (a renewal may also lift a lapse)."""
        with self._ready:
            if self._draining:
                return  # closing: the share is being given back
            self.limit, self.valid_until = limit, valid_until
            free = limit - self.in_flight
            if free > 0 and self.waiting:
                self._ready.notify(free)

    def drain(self, timeout: float) -> bool:
        """Admit nobody from now on (no renewal lifts it) and wait at most ``timeout`` for the
        calls in flight to land: whether they all did."""
        with self._ready:
            self.limit, self.valid_until, self._draining = 0, -math.inf, True
            deadline = time.monotonic() + timeout
            while self.in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._ready.wait(remaining)
            return True

    def take_demand(self) -> tuple[int, int, int]:
        """The peak demand since the last call, the requests in flight now and the limit in force
        (what the process may fill until it resizes); restarts the peak."""
        with self._ready:
            now = self.in_flight + self.waiting
            peak, self._peak = max(self._peak, now), now
            return peak, self.in_flight, self.limit


class Governor:
    """One process's share of the account's budget (start it once; close it on shutdown)."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        slot_wait: float,
        interval: float | None = None,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.slot_wait = slot_wait
        # Five renewals per lease: one lost heartbeat never lets a live lease expire.
        self.interval = interval if interval is not None else store.ttl / 5
        self.holder = holder or default_holder()
        self._clock = clock
        self.slots = Slots(clock=clock)
        self.lease: Lease | None = None
        self._demands: deque[int] = deque(maxlen=DEMAND_MEMORY)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state = threading.Lock()
        self._throttled = 0
        self._retry_after: float | None = None
        self._renewed_at: float | None = None
        self._thread: threading.Thread | None = None

    # -- the hot path ------------------------------------------------------------------------------

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the process's slots for one TaskRouter call."""
        waited = self.slots.acquire(self.slot_wait, self._wake)
        if waited is None:
            metrics.governor_wait(None)
            raise SlotUnavailable(
                f"no TaskRouter slot came free in {self.slot_wait:g} s: the fleet uses its whole"
                f" budget ({self.lease.budget if self.lease else '?'} requests in flight)"
            )
        if waited:
            metrics.governor_wait(waited)
        metrics.TASKROUTER_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.slots.release()
            metrics.TASKROUTER_IN_FLIGHT.dec()

    def throttled(self, retry_after: float | None) -> None:
        """TaskRouter answered 429: tell the fleet at once (the next heartbeat shrinks the budget)."""
        with self._state:
            self._throttled += 1
            if retry_after is not None:
                self._retry_after = max(self._retry_after or 0.0, retry_after)
        self._wake.set()

    # -- the heartbeat -----------------------------------------------------------------------------

    def start(self) -> None:
        """Lease a share now (so the first requests need not wait), then keep renewing it."""
        if self._thread is not None:
            return
        self.beat()
        self._thread = threading.Thread(target=self._run, name="taskrouter-governor", daemon=True)
        self._thread.start()

    def beat(self) -> Lease | None:
        """Renew the lease once: the new grant, or None when the store failed (the process keeps
        its share for ``LEASE_USE`` of the lease, admits nobody until the lease would have expired,
        then falls back to one slot while the database stays out of reach)."""
        with self._state:
            throttled, retry_after = self._throttled, self._retry_after
            self._throttled, self._retry_after = 0, None
        asked_at = self._clock()  # the lease runs from no earlier than this
        peak, in_flight, limit = self.slots.take_demand()
        self._demands.append(peak)
        # Nothing measured yet: ask for a full share, not one slot.
        demand = UNKNOWN_DEMAND if self.lease is None else max(self._demands)
        report = Report(self.holder, max(1, demand), in_flight, throttled, retry_after, limit)
        try:
            lease = self.store.heartbeat(report)
        except LedgerError as exc:
            with self._state:  # reported again next time
                self._throttled += throttled
                if retry_after is not None:
                    self._retry_after = max(self._retry_after or 0.0, retry_after)
            self._lost(exc)
            return None
        self._renewed_at = asked_at
        self.lease = lease
        self.slots.resize(lease.granted, asked_at + self.store.ttl * LEASE_USE)
        metrics.governor_lease(lease.granted, lease.budget, lease.fleet_in_flight)
        if lease.expired:
            logger.warning(
                "TaskRouter governor: leases of %s expired (their processes stopped renewing);"
                " their share is free again",
                ", ".join(lease.expired),
            )
        return lease

    def _lost(self, exc: LedgerError) -> None:
        renewed = self._renewed_at
        if renewed is None or self._clock() - renewed > self.store.ttl:
            # Our lease has expired (or never was) and the database that shares the budget is out
            # of reach: one slot at a time keeps the process going (others may hold our share).
            self.slots.resize(1)
        logger.warning("TaskRouter governor: could not renew the lease: %s", exc)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            # Woken by waiting requests or a 429: still no more than four renewals per interval.
            pause = self.interval / 4 - (time.monotonic() - last)
            if pause > 0 and self._stop.wait(pause):
                break
            self._wake.clear()
            if self._stop.is_set():
                break
            last = time.monotonic()
            try:
                self.beat()
            except Exception:  # a bug must not stop the renewals: the share would expire
                logger.exception("TaskRouter governor: the heartbeat failed")

    def close(self) -> None:
        """Stop renewing and admitting, and give the share back once the calls in flight have
        landed (until then their slots are still in use: handing them to another process would
        take the fleet past its budget). Calls that do not land within a lease leave the lease to
        expire instead."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.interval + 10)
        if not self.slots.drain(self.store.ttl):
            logger.warning(
                "TaskRouter governor: %d calls still in flight at close; the lease is left to expire",
                self.slots.in_flight,
            )
            self.store.close()
            return
        try:
            self.store.drop(self.holder)
        except LedgerError as exc:
            logger.warning("TaskRouter governor: could not give the lease back (it will expire): %s", exc)
        self.store.close()


def default_holder() -> str:
    """``host:pid:random``: unique per process, readable by operators."""
    return f"{socket.gethostname()[:150]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def budget_ceiling(max_concurrency: int, reserved: int) -> int:
    """The fleet's budget: the account's limit less the share kept for other applications."""
    return max(1, max_concurrency - reserved)


def default_floor(ceiling: int) -> int:
    """The budget never shrinks below a quarter of its ceiling: 429s that have nothing to do with
    concurrency (a fault, another application's burst) must not starve the fleet."""
    return max(1, math.ceil(ceiling / 4))
