"""Benchmark the account-wide TaskRouter concurrency governor, on and off, in one run.

The emulator runs as its own process with an account concurrency limit (``--concurrency-limit``:
429, error 20429, beyond N requests in flight) and a fixed latency L on every call. Real Celery
worker processes (default 3 x 32 threads: far more threads than the limit) apply the same kind of
work as ``ops/bench_workers.py`` (ten actions per reservation), first with the governor on
(``TASKROUTER_MAX_CONCURRENCY`` = the limit, nothing reserved), then with it off. For each run it
prints the share of TaskRouter requests refused with 429, the actions per second, and that rate
against the ceiling N / (k * L), where k is the TaskRouter calls per action that were not refused
(measured in the same run). It also prints the governor's own cost per request: the time of a
call through the gateway with and without a slot, against the emulator at 0 ms, as a ratio.

Issue 16's target: 429s under 1 % of requests and at least 80 % of N / (k * L) with the governor on.

Run from the repository root: ``.venv/bin/python ops/bench_governor.py`` (``--help`` for options).
Requests go to loopback only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence

import bench_workers  # ops/: run as a script, its folder is on sys.path
from bench_workers import actions_for, run_celery, scratch_database, seed, vhost

from workers.config import Settings
from workers.core.governor import BudgetPolicy
from workers.ledger.leases import PostgresLeases
from workers.taskrouter.gateway import ReservationRef, TaskRouterGateway
from workers.taskrouter.governor import Governor
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import emulator_env
from workers.testing.processes import WorkerProcess


class InFlight:
    """Samples the emulator's requests in flight every 50 ms while a run lasts, and what the
    workers' leases say they hold (slots taken, calls waiting) at their heartbeats."""

    def __init__(self, base_url: str, db_url: str) -> None:
        self._base_url = base_url
        self._db_url = db_url
        self._samples: list[int] = []
        self._held: list[int] = []
        self._asked: list[int] = []
        self._granted: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> InFlight:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _sample(self) -> None:
        with EmulatorAdmin(self._base_url) as probe, bench_workers.connect_patiently(self._db_url) as conn:
            ticks = 0
            while not self._stop.wait(0.05):
                self._samples.append(int(probe.concurrency()["in_flight"]))
                ticks += 1
                if ticks % 10 == 0:
                    row = conn.execute(
                        "SELECT coalesce(sum(in_flight), 0), coalesce(sum(demand), 0),"
                        " coalesce(sum(granted), 0) FROM ledger.taskrouter_leases"
                    ).fetchone()
                    if row is not None and row[1]:
                        self._held.append(int(row[0]))
                        self._asked.append(int(row[1]))
                        self._granted.append(int(row[2]))

    @property
    def held(self) -> str:
        """Slots held and demand (in flight or waiting) across the leases, on average."""
        if not self._held:
            return "no leases (governor off)"
        return (
            f"the leases granted {statistics.fmean(self._granted):.1f} slots on average,"
            f" the workers held {statistics.fmean(self._held):.1f}"
            f" and asked for {statistics.fmean(self._asked):.1f}"
        )

    @property
    def mean(self) -> float:
        return statistics.fmean(self._samples) if self._samples else 0.0

    @property
    def most(self) -> int:
        return max(self._samples, default=0)


def governed_run(
    label: str,
    env: dict[str, str],
    settings: Settings,
    admin: EmulatorAdmin,
    db_url: str,
    args: argparse.Namespace,
) -> tuple[float, float, float]:
    """One run of the workers: (actions/s, 429 share of requests, TaskRouter calls per action)."""
    per_reservation = max(1, args.actions // args.reservations)
    with contextlib.ExitStack() as stack:
        for _ in range(args.workers):
            stack.enter_context(WorkerProcess(env, concurrency=args.concurrency, loglevel="WARNING"))
        warmup = actions_for(seed(admin, args.workers * args.concurrency), 1)
        run_celery("warm-up", settings, admin, warmup, db_url)
        actions = actions_for(seed(admin, args.reservations), per_reservation)
        with InFlight(admin.base_url, db_url) as in_flight:
            figures = run_celery(label, settings, admin, actions, db_url)
    by_status = admin.counters()["by_status"]
    refused = int(by_status.get("429", 0))
    requests = int(sum(by_status.values()))
    calls_per_action = (requests - refused) / figures.actions
    ceiling = args.limit / (calls_per_action * args.latency / 1000)
    share = refused / requests if requests else 0.0
    print(
        f"{label:<14} {figures.rate:7.1f} actions/s = {figures.rate / ceiling:6.1%} of {args.limit}/(k*L)"
        f" = {ceiling:.1f}/s (k = {calls_per_action:.2f}, L = {args.latency} ms);"
        f" 429s {refused} of {requests} requests = {share:.2%};"
        f" p99 {figures.percentile(0.99):.0f} ms; {figures.outcomes}",
        flush=True,
    )
    print(
        f"{'':<14} requests in flight at the emulator: mean {in_flight.mean:.1f}, most {in_flight.most}"
        f" of {args.limit}; {in_flight.held} (at their heartbeats)",
        flush=True,
    )
    return figures.rate / ceiling, share, calls_per_action


def overhead(settings: Settings, admin: EmulatorAdmin, db_url: str, calls: int) -> None:
    """The governor's cost per request: the same fetches with and without a slot, one thread,
    alternating in blocks of 50 so that load from other processes hits both alike (the median of
    the blocks' ratios), and the cost of taking and giving back a slot alone."""
    admin.clear_faults()
    admin.set_concurrency(None)
    reservation = admin.create_reservation()
    ref = ReservationRef(reservation.workspace_sid, reservation.sid, task_sid=reservation.task_sid)
    store = PostgresLeases(db_url, "AC" + uuid.uuid4().hex, BudgetPolicy(20), ttl=10.0)
    governor = Governor(store, slot_wait=10.0)
    governor.start()
    block = 50
    try:
        plain = TaskRouterGateway.from_settings(settings)
        governed = TaskRouterGateway.from_settings(settings, governor=governor)
        ratios, totals = [], {"off": 0.0, "on": 0.0}
        for _ in range(max(1, calls // block)):
            spent = {}
            for name, gateway in (("off", plain), ("on", governed)):
                started = time.perf_counter()
                for _ in range(block):
                    gateway.fetch(ref)
                spent[name] = time.perf_counter() - started
                totals[name] += spent[name]
            ratios.append(spent["on"] / spent["off"])
        slot_started = time.perf_counter()
        for _ in range(calls * 10):
            with governor.slot():
                pass
        slot_us = (time.perf_counter() - slot_started) / (calls * 10) * 1e6
    finally:
        governor.close()
    fetch_ms = totals["off"] / (len(ratios) * block) * 1000
    print(
        f"{'overhead':<14} a slot costs {slot_us:.1f} us"
        f" = {slot_us / (fetch_ms * 1000):.2%} of a {fetch_ms:.2f} ms"
        f" fetch at 0 ms; governed / ungoverned fetches: median ratio {statistics.median(ratios):.3f}"
        f" over {len(ratios)} blocks (plus one heartbeat transaction per process every {store.ttl / 5:g} s)",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=20, help="the account's concurrency limit (20)")
    parser.add_argument("--latency", type=int, default=200, help="emulator latency per call, ms (200)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes (3)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker process (32)")
    parser.add_argument("--actions", type=int, default=3000, help="actions per measured run (3000)")
    parser.add_argument("--reservations", type=int, default=300, help="reservations they spread over (300)")
    parser.add_argument(
        "--retry-after", type=int, default=None, help="Retry-After of the emulator's 429s (default none)"
    )
    parser.add_argument(
        "--overhead-calls", type=int, default=1000, help="fetches each way for the overhead (1000)"
    )
    parser.add_argument(
        "--ledger-pool", type=int, default=18, help="ledger connections per worker process (18)"
    )
    parser.add_argument("--skip-off", action="store_true", help="skip the run with the governor off")
    args = parser.parse_args(argv)
    bench_workers.SETTLE_TIMEOUT = 600.0  # without the governor, 429s and backoff take their time

    print(
        f"{args.workers} worker process(es) x {args.concurrency} threads; emulator limited to {args.limit}"
        f" requests in flight at {args.latency} ms; {args.actions} actions over {args.reservations}"
        f" reservations; {os.cpu_count()} CPUs",
        flush=True,
    )
    extra = ["--concurrency-limit", str(args.limit)]
    if args.retry_after is not None:
        extra += ["--concurrency-retry-after", str(args.retry_after)]
    with (
        scratch_database() as db_url,
        vhost() as broker_url,
        EmulatorProcess(extra_args=extra) as emulator,
        EmulatorAdmin(emulator.base_url) as admin,
    ):
        base = {
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url,
            **emulator_env(emulator.base_url),
            "LEDGER_PII_KEY": "bench-pii-key",
            # PostgreSQL's default max_connections (100) cannot give 3 x 32 threads one each: the
            # runs share fewer (an action waits for one; the TaskRouter budget is the limit anyway).
            "LEDGER_POOL_MAX": str(args.ledger_pool),
            "INTAKE_THREADS": "1",
            "TASKROUTER_RESERVED_CONCURRENCY": "0",
        }
        settings = Settings.from_env({**base, "TASKROUTER_MAX_CONCURRENCY": "0"})
        admin.add_fault("latency", latency_ms=args.latency)
        on = {**base, "TASKROUTER_MAX_CONCURRENCY": str(args.limit)}
        reached, refused, _ = governed_run("governor on", on, settings, admin, db_url, args)
        if not args.skip_off:
            off = {**base, "TASKROUTER_MAX_CONCURRENCY": "0"}
            governed_run("governor off", off, settings, admin, db_url, args)
        overhead(settings, admin, db_url, args.overhead_calls)
    verdict = "met" if refused < 0.01 and reached >= 0.8 else "NOT met"
    print(f"target (429s < 1 %, >= 80 % of N/(k*L)) with the governor on: {verdict}")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
