"""Benchmark the workers end to end, and a plain loop doing the same work, in one run.

Everything is real: RabbitMQ with publisher confirms (a private vhost), PostgreSQL with the full
ledger (a fresh database, dropped afterwards), the emulator over HTTP driven by the twilio SDK,
and Celery worker processes. For each emulator latency it prints:

- actions/s end to end (first publish to last outcome in the ledger) for 2,000 actions over 200
  reservations (ten actions each: nine ``call`` instructions that leave the reservation pending,
  then an ``accept``), with latency p50/p95/p99 (publish to outcome) and HTTP calls per action;
- the same kind of work done by a plain loop (the same applier, twilio calls and ledger writes,
  one action after another, no Celery), and the ratio of the two;
- at the paced latency, p50/p95/p99 when actions arrive at a steady rate (default 150/s).

By default the publishers hand actions straight to the apply task (``enqueue``, as internal callers
do); ``--via intake`` publishes plain JSON through the intake instead, as other services do.

Run from the repository root: ``.venv/bin/python ops/bench_workers.py`` (``--help`` for options).
Requests go to loopback only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql

from workers.apply.applier import ActionApplier
from workers.composition import create_app
from workers.config import Settings
from workers.core.action import Action, ActionKind
from workers.ledger.connector import database_name, drop_database, with_database
from workers.ledger.migrations import migrate
from workers.ledger.writer import PostgresLedgerWriter
from workers.taskrouter.gateway import TaskRouterGateway
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import emulator_env
from workers.testing.processes import WorkerProcess

ADMIN_URL = os.environ.get("BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CALL = {"call_from": "+15550001111", "call_url": "https://example.test/twiml"}
SETTLE_TIMEOUT = 120.0
PUBLISHERS = 4
GREEN_POOLS = frozenset({"gevent", "eventlet"})
THREADS_PER_PUBLISHER = 8


@dataclass(frozen=True)
class Figures:
    label: str
    actions: int
    seconds: float
    latencies_ms: list[float]
    http_calls: int
    outcomes: dict[str, int]
    publishing: float | None = None
    load_cpu: float = 0.0  # CPU seconds of the publishing processes

    @property
    def rate(self) -> float:
        return self.actions / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def line(self) -> str:
        per_action = self.http_calls / self.actions
        text = f"{self.label:<38} {self.rate:8.1f} actions/s   {per_action:4.2f} HTTP calls/action"
        if self.latencies_ms:
            text += (
                f"   p50 {self.percentile(0.50):6.1f} ms  p95 {self.percentile(0.95):6.1f} ms"
                f"  p99 {self.percentile(0.99):6.1f} ms"
            )
        if self.publishing is not None:
            text += f"   (published in {self.publishing:.1f} s)"
        return text + f"   {self.outcomes}"


def actions_for(reservations: Sequence[ReservationInfo], per_reservation: int) -> list[Action]:
    """Round by round, so a reservation's actions are published in their order."""
    actions: list[Action] = []
    for round_number in range(per_reservation):
        last = round_number == per_reservation - 1
        for r in reservations:
            kind, params = (ActionKind.ACCEPT, {}) if last else (ActionKind.CALL, CALL)
            actions.append(
                Action(uuid.uuid4(), kind, r.workspace_sid, r.sid, task_sid=r.task_sid, params=params)
            )
    return actions


# Each action's outcome and when it was recorded, once it has one (the ledger's registry).
LEDGER_OUTCOMES = sql.SQL(
    "SELECT action_id, outcome, outcome_at FROM ledger.actions WHERE outcome IS NOT NULL"
)


def wait_for_outcomes(
    db_url: str,
    ids: Sequence[uuid.UUID],
    outcomes_sql: sql.SQL = LEDGER_OUTCOMES,
    conn: psycopg.Connection[Any] | None = None,
) -> dict[uuid.UUID, tuple[str, datetime]]:
    """Wait until every action has an outcome; poll lightly, so the poll itself costs little.

    ``outcomes_sql`` selects (action_id, outcome, when) of settled actions; the ids are ANDed in."""
    settled_sql = sql.SQL("{} AND action_id = ANY(%s)").format(outcomes_sql)
    count_sql = sql.SQL("SELECT count(*) FROM ({}) AS settled").format(settled_sql)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    next_report = time.monotonic() + 5
    with conn or connect_patiently(db_url) as conn:
        while True:
            row = conn.execute(count_sql, (list(ids),)).fetchone()
            settled = row[0] if row else 0
            if settled == len(ids):
                rows = conn.execute(settled_sql, (list(ids),)).fetchall()
                return {r[0]: (r[1], r[2]) for r in rows}
            if time.monotonic() > deadline:
                raise SystemExit(f"only {settled} of {len(ids)} actions settled in {SETTLE_TIMEOUT} s")
            if time.monotonic() > next_report:
                print(f"  ... {settled}/{len(ids)} settled", file=sys.stderr, flush=True)
                next_report = time.monotonic() + 5
            time.sleep(0.25)


def connect_patiently(db_url: str, patience: float = 60.0) -> psycopg.Connection[Any]:
    """A connection, waiting out a full server for a while (other work may hold its connections)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return psycopg.connect(db_url, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def count(outcomes: dict[uuid.UUID, tuple[str, datetime]]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for outcome, _ in outcomes.values():
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


class Lane(Protocol):
    """One publishing thread's way to hand an action to the workers under test."""

    def connect(self) -> None: ...

    def publish(self, message: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class IntakeLane:
    """Plain JSON to the intake through a :class:`~workers.broker.producer.Producer`, as other
    services publish."""

    def __init__(self, broker_url: str, lanes_ready: threading.Barrier) -> None:
        from workers.broker.producer import Producer

        self.producer = Producer(broker_url)

    def connect(self) -> None:
        self.producer.connect()

    def publish(self, message: dict[str, Any]) -> None:
        self.producer.publish(message)

    def close(self) -> None:
        self.producer.close()


class ApplyLane:
    """``enqueue()``: straight to the apply task, confirmed, as internal callers do."""

    def __init__(self, broker_url: str, lanes_ready: threading.Barrier) -> None:
        self.app = _app_for(broker_url)
        self.lanes_ready = lanes_ready

    def connect(self) -> None:
        with self.app.runtime.publishers.confirmed() as producer:
            producer.connection.ensure_connection(max_retries=3)
            self.lanes_ready.wait()  # every lane holds a producer at once: one connection each

    def publish(self, message: dict[str, Any]) -> None:
        self.app.enqueue(Action.from_message(message))

    def close(self) -> None:
        pass


_apps: dict[str, Any] = {}


def _app_for(broker_url: str) -> Any:
    """One app per publisher process, shared by its lanes (and their pool of confirmed producers)."""
    if broker_url not in _apps:
        _apps[broker_url] = create_app(Settings.from_env({"CELERY_BROKER_URL": broker_url}))
    return _apps[broker_url]


LaneFactory = Callable[[str, threading.Barrier], Lane]
LANES: dict[str, LaneFactory] = {"apply": ApplyLane, "intake": IntakeLane}


def publish_share(
    broker_url: str, messages: list[dict[str, Any]], pace: float | None, lanes: LaneFactory
) -> tuple[dict[str, float], float]:
    """One producer process: publish its share from a few threads, each a ``lanes(...)``; when
    each message went, and the CPU seconds this process spent (the load generator's cost).

    The clock starts only once every publisher is ready (imports done, a connection per thread
    open): otherwise late starters publish their backlog in a burst, which is not the steady
    arrival the paced run promises, and their imports compete with the workers.
    """
    published: dict[str, float] = {}
    lanes_ready = threading.Barrier(THREADS_PER_PUBLISHER, timeout=60)
    producers = [lanes(broker_url, lanes_ready) for _ in range(THREADS_PER_PUBLISHER)]
    cpu_before = time.process_time()

    def connect(lane: int) -> None:
        try:
            producers[lane].connect()
        except BaseException:
            lanes_ready.abort()  # the other lanes stop waiting, and so do the other publishers
            assert _publishers_ready is not None
            _publishers_ready.abort()
            raise

    def lane(offset: int, start: float) -> None:
        for n in range(offset, len(messages), THREADS_PER_PUBLISHER):
            if pace is not None:
                time.sleep(max(0.0, start + n / pace - time.time()))
            published[messages[n]["action_id"]] = time.time()
            producers[offset].publish(messages[n])

    with ThreadPoolExecutor(THREADS_PER_PUBLISHER) as threads:
        list(threads.map(connect, range(THREADS_PER_PUBLISHER)))
        assert _publishers_ready is not None
        _publishers_ready.wait()
        cpu_before = time.process_time()
        start = time.time()
        list(threads.map(lane, range(THREADS_PER_PUBLISHER), [start] * THREADS_PER_PUBLISHER))
    cpu = time.process_time() - cpu_before
    for producer in producers:
        producer.close()
    return published, cpu


_publishers_ready: Any = None  # a multiprocessing barrier, handed to each publisher process


def _join_publishers(barrier: Any) -> None:
    global _publishers_ready
    _publishers_ready = barrier


def run_celery(
    label: str,
    settings: Settings,
    admin: EmulatorAdmin,
    actions: list[Action],
    db_url: str,
    pace: float | None = None,
    via: str = "apply",
    *,
    lanes: LaneFactory | None = None,
    outcomes_sql: sql.SQL = LEDGER_OUTCOMES,
) -> Figures:
    """Producers are many services: several processes publish, each waiting for its own confirms
    (``lanes``: how each publishing thread feeds the workers, by default ``LANES[via]``)."""
    admin.reset_counters()
    poll = connect_patiently(db_url)  # taken first: the server's connections are shared with the workers
    messages = [a.to_message() for a in actions]
    shares = [messages[i::PUBLISHERS] for i in range(PUBLISHERS)]
    share_pace = None if pace is None else pace / PUBLISHERS
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(PUBLISHERS, timeout=60)
    with ProcessPoolExecutor(
        PUBLISHERS, mp_context=context, initializer=_join_publishers, initargs=(ready,)
    ) as pool:
        futures = [
            pool.submit(publish_share, settings.broker_url, share, share_pace, lanes or LANES[via])
            for share in shares
        ]
        results = [f.result() for f in futures]
    published = {uuid.UUID(k): v for sent, _ in results for k, v in sent.items()}
    load_cpu = sum(cpu for _, cpu in results)
    first = min(published.values())
    publishing = max(published.values()) - first
    outcomes = wait_for_outcomes(db_url, list(published), outcomes_sql, poll)
    finished = max(at.timestamp() for _, at in outcomes.values())
    latencies = [(outcomes[i][1].timestamp() - t) * 1000 for i, t in published.items()]
    calls = int(admin.counters()["requests"])
    return Figures(
        label, len(actions), finished - first, latencies, calls, count(outcomes), publishing, load_cpu
    )


def run_loop(
    label: str, settings: Settings, admin: EmulatorAdmin, actions: list[Action], db_url: str
) -> Figures:
    ledger = PostgresLedgerWriter.from_settings(settings, min_size=1, max_size=2)
    applier = ActionApplier(ledger, TaskRouterGateway.from_settings(settings), settings.retry)
    admin.reset_counters()
    try:
        start = time.time()
        for action in actions:
            applier.apply(action)
        seconds = time.time() - start
    finally:
        ledger.close()
    outcomes = wait_for_outcomes(db_url, [a.action_id for a in actions])
    return Figures(label, len(actions), seconds, [], int(admin.counters()["requests"]), count(outcomes))


@contextlib.contextmanager
def vhost() -> Iterator[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        yield "amqp://guest:guest@127.0.0.1:5672//"
        return
    name = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "-q", "add_vhost", name], check=True)
    try:
        subprocess.run([ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True)
        yield f"amqp://guest:guest@127.0.0.1:5672/{name}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", name], check=False)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    url = with_database(ADMIN_URL, f"bench_workers_{uuid.uuid4().hex[:8]}")
    migrate(url)
    if os.environ.get("BENCH_SYNCHRONOUS_COMMIT"):  # a diagnostic: what do commit fsyncs cost?
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(
                    sql.Identifier(database_name(url)), sql.Literal(os.environ["BENCH_SYNCHRONOUS_COMMIT"])
                )
            )
    try:
        yield url
    finally:
        drop_database(url)


def proportional_memory_mb(pid: int) -> float:
    """PSS of a process and its descendants (Linux): shared pages are split between the processes
    that share them, so a prefork pool's children are not counted once each for the parent's pages."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        proc = Path(f"/proc/{current}")
        try:
            rollup = (proc / "smaps_rollup").read_text()
            for children in proc.glob("task/*/children"):
                pending.extend(int(child) for child in children.read_text().split())
        except OSError:  # gone, or not Linux
            continue
        total_kb += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total_kb / 1024


def seed(admin: EmulatorAdmin, count_: int) -> list[ReservationInfo]:
    workspace = admin.create_workspace()["sid"]
    return [admin.create_reservation(workspace_sid=workspace) for _ in range(count_)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actions", type=int, default=2000, help="actions per measured run (default 2000)")
    parser.add_argument("--reservations", type=int, default=200, help="reservations they spread over (200)")
    parser.add_argument(
        "--latencies", default="0,50", help="emulator latencies in ms, comma-separated (0,50)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2, one per core)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker process (32)")
    parser.add_argument(
        "--pool",
        default="threads",
        help="Celery pool: threads (default), prefork, solo, or gevent (pip install gevent; run with "
        "AMQP heartbeats off, as Celery's loop for green pools takes one task per 0.1 s with them)",
    )
    parser.add_argument("--loop-actions", type=int, default=200, help="actions for the plain loop (200)")
    parser.add_argument(
        "--pace", type=float, default=150.0, help="steady arrival rate for the paced run (150/s)"
    )
    parser.add_argument(
        "--pace-latency", type=int, default=50, help="emulator latency of the paced run (50 ms)"
    )
    parser.add_argument("--pace-seconds", type=float, default=10.0, help="length of the paced run (10 s)")
    parser.add_argument(
        "--via",
        choices=("apply", "intake"),
        default="apply",
        help="apply: enqueue() straight to the apply task (default); intake: plain JSON through the "
        "intake, as other services publish",
    )
    args = parser.parse_args(argv)
    latencies = [int(x) for x in args.latencies.split(",") if x.strip()]
    per_reservation = max(1, args.actions // args.reservations)
    via = " via intake" if args.via == "intake" else ""

    print(
        f"{args.workers} worker process(es) x {args.concurrency} {args.pool}; {args.actions} actions over "
        f"{args.reservations} reservations; {os.cpu_count()} CPUs"
    )
    with scratch_database() as db_url, vhost() as broker_url, EmulatorProcess() as emulator:
        env = {
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url,
            **emulator_env(emulator.base_url),
            "LEDGER_PII_KEY": "bench-pii-key",
            "LEDGER_POOL_MAX": str(args.concurrency + 4),
        }
        if args.pool in GREEN_POOLS:  # Celery's loop for them stalls 0.1 s per task with heartbeats
            env["BROKER_HEARTBEAT"] = "0"
        settings = Settings.from_env(env)
        with EmulatorAdmin(emulator.base_url) as admin:
            for latency in latencies:
                admin.clear_faults()
                if latency:
                    admin.add_fault("latency", latency_ms=latency)
                workers = [
                    WorkerProcess(env, pool=args.pool, concurrency=args.concurrency, loglevel="WARNING")
                    for _ in range(args.workers)
                ]
                with contextlib.ExitStack() as stack:
                    for worker in workers:
                        stack.enter_context(worker)
                    warmup = actions_for(seed(admin, args.workers * args.concurrency), 1)
                    run_celery("warm-up", settings, admin, warmup, db_url, via=args.via)
                    celery = run_celery(
                        f"celery{via}, {latency} ms",
                        settings,
                        admin,
                        actions_for(seed(admin, args.reservations), per_reservation),
                        db_url,
                        via=args.via,
                    )
                    memory = sum(proportional_memory_mb(w.process.pid) for w in workers if w.process)
                    paced = None
                    if latency == args.pace_latency:
                        n = int(args.pace * args.pace_seconds)
                        reservations = seed(admin, max(1, n // per_reservation))
                        paced = run_celery(
                            f"celery{via}, {latency} ms, paced {args.pace:.0f}/s",
                            settings,
                            admin,
                            actions_for(reservations, per_reservation)[:n],
                            db_url,
                            pace=args.pace,
                            via=args.via,
                        )
                loop_reservations = max(1, args.loop_actions // per_reservation)
                loop = run_loop(
                    f"plain loop, {latency} ms",
                    settings,
                    admin,
                    actions_for(seed(admin, loop_reservations), per_reservation),
                    db_url,
                )
                print(celery.line())
                if memory:  # Linux only
                    print(f"{'worker memory (PSS, all processes)':<38} {memory:8.0f} MB")
                if paced is not None:
                    print(paced.line())
                print(loop.line())
                print(f"{'ratio celery / plain loop':<38} {celery.rate / loop.rate:8.2f}x")
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
