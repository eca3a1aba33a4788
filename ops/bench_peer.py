"""Head to head: this project against the naive Celery worker a team would write instead.

The naive worker is ``ops/peer_worker.py``: one Celery task that fetches with the twilio SDK,
updates with If-Match, retries a 412 through Celery and INSERTs one audit row. Each side is fed as
its users feed it: ours plain JSON through the intake (as other services publish), the peer by
``apply_async``. Both run on the same emulator, PostgreSQL and RabbitMQ (a private vhost), as real
worker processes (default 2 x 32 threads each, all started once), on N accepts of N pending
reservations, timed from the first publish to the last outcome. Peer and ours alternate within
one run (the order flips at each latency), so both see the same machine.

For each emulator latency it prints both rates and their ratio, HTTP calls per action, CPU ms
per action of each process group (workers, PostgreSQL, RabbitMQ, the emulator, the load
generator; from /proc, so Linux only; PostgreSQL and RabbitMQ are the whole server's, other
users' work included; ``pg-own`` is the part spent by the backends connected to this run's
database, which is this run's ledger and audit work alone), and ``ours / min(CPU ceiling,
C/(k*L))``: the CPU ceiling is this machine's cores over the CPU all processes spent per action
(then, stricter, with ``pg-own`` for PostgreSQL), C the workers' threads, k HTTP calls per action
and L the latency; and the load average. At ``--pace-latency`` (50 ms) it then paces each side at
a steady half of the rate it just reached, and then at ``--floor-pace`` (20 actions/s, the machine
nearly idle), and prints p50/p95/p99 publish->outcome of each: the issue's target is ours at half
our peak; the peer's figures and the near-idle ones show what this machine, the emulator and the
broker allow any worker. At the end it prints the workers' memory (PSS).

Run from the repository root: ``.venv/bin/python ops/bench_peer.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peer_worker
import psycopg
from bench_workers import (
    LEDGER_OUTCOMES,
    Figures,
    IntakeLane,
    LaneFactory,
    proportional_memory_mb,
    run_celery,
    scratch_database,
    seed,
    vhost,
)
from psycopg import sql

from workers.config import Settings
from workers.core.action import Action, ActionKind
from workers.ledger.connector import database_name, with_database
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import emulator_env
from workers.testing.processes import WorkerProcess

PEER_OUTCOMES = sql.SQL("SELECT action_id, 'applied', recorded_at FROM peer_audit WHERE true")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
GROUPS = ("workers", "postgres", "rabbitmq", "emulator", "load")


class PeerLane:
    """The peer's producers: ``accept.apply_async(...)`` on Celery's own producer pool."""

    def __init__(self, broker_url: str, lanes_ready: threading.Barrier) -> None:
        peer_worker.app.conf.broker_url = broker_url
        self.lanes_ready = lanes_ready

    def connect(self) -> None:
        with peer_worker.app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=3)
            self.lanes_ready.wait()  # every lane holds a producer at once: one connection each

    def publish(self, message: dict[str, Any]) -> None:
        peer_worker.accept.apply_async(
            args=[
                message["action_id"],
                message["workspace_sid"],
                message["task_sid"],
                message["reservation_sid"],
            ]
        )

    def close(self) -> None:
        pass


# --- CPU from /proc -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}").glob("task/*/children"):
        with contextlib.suppress(OSError):
            found.extend(int(child) for child in children.read_text().split())
    return found


def cpu_seconds(roots: Iterable[int], reaped: bool = False) -> float:
    """CPU seconds of ``roots`` and their descendants; with ``reaped``, also what their children
    that exited already spent (PostgreSQL's backends come and go)."""
    total, pending, seen = 0, list(roots), set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        fields = _stat(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if reaped:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
        pending.extend(_children(pid))
    return total / CLOCK_TICKS


def pids_named(name: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(int(p.name)) == name]


def server_roots(name: str) -> list[int]:
    """The top processes called ``name`` (a server's main process, whose children it reaps)."""
    pids = set(pids_named(name))
    roots = []
    for pid in pids:
        fields = _stat(pid)
        if fields is not None and int(fields[1]) not in pids:
            roots.append(pid)
    return roots


def database_backends(db_url: str) -> list[int]:
    """The PostgreSQL backends connected to ``db_url``'s database (the workers' pools hold theirs
    for the whole run, so their CPU before and after it is this run's)."""
    with psycopg.connect(with_database(db_url, "postgres"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", [database_name(db_url)]
        ).fetchall()
    return [int(row[0]) for row in rows]


@dataclass
class Meter:
    """What each group of processes has spent so far: read before and after a run."""

    workers: Callable[[], list[int]]
    emulator_pid: int
    db_url: str

    def read(self) -> dict[str, float]:
        return {
            "workers": cpu_seconds(self.workers()),
            "postgres": cpu_seconds(server_roots("postgres"), reaped=True),
            "pg-own": cpu_seconds(database_backends(self.db_url)),
            "rabbitmq": cpu_seconds(server_roots("beam.smp"), reaped=True),
            "emulator": cpu_seconds([self.emulator_pid]),
        }


@dataclass
class Side:
    """One contender: its measured run at one latency, and the CPU its processes spent on it."""

    figures: Figures
    cpu: dict[str, float]  # seconds per group
    paced: list[Side] = field(default_factory=list)  # the same side at steady paces

    def cpu_ms(self, group: str) -> float:
        return self.cpu[group] * 1000 / self.figures.actions

    @property
    def cpu_ms_total(self) -> float:
        return sum(self.cpu_ms(g) for g in GROUPS)

    @property
    def cpu_ms_own(self) -> float:
        """The total with only this run's PostgreSQL backends (not other users' work)."""
        return self.cpu_ms_total - self.cpu_ms("postgres") + self.cpu_ms("pg-own")

    @property
    def http_per_action(self) -> float:
        return self.figures.http_calls / self.figures.actions


def accepts(reservations: Sequence[ReservationInfo]) -> list[Action]:
    return [
        Action(uuid.uuid4(), ActionKind.ACCEPT, r.workspace_sid, r.sid, task_sid=r.task_sid)
        for r in reservations
    ]


def measured(
    label: str,
    meter: Meter,
    settings: Settings,
    admin: EmulatorAdmin,
    count: int,
    db_url: str,
    lanes: LaneFactory,
    outcomes_sql: sql.SQL,
    pace: float | None = None,
) -> Side:
    actions = accepts(seed(admin, count))
    before = meter.read()
    figures = run_celery(
        label, settings, admin, actions, db_url, pace, lanes=lanes, outcomes_sql=outcomes_sql
    )
    after = meter.read()
    cpu = {group: after[group] - before[group] for group in before}
    cpu["load"] = figures.load_cpu
    return Side(figures, cpu)


def cpu_line(label: str, side: Side) -> str:
    parts = "  ".join(f"{g} {side.cpu_ms(g):5.2f}" for g in GROUPS)
    own = f"(pg-own {side.cpu_ms('pg-own'):5.2f}, total {side.cpu_ms_own:5.2f})"
    return f"  CPU ms/action {label:<6} {parts}  total {side.cpu_ms_total:5.2f}  {own}"


def report(latency: int, peer: Side, ours: Side, concurrency: int) -> None:
    print(peer.figures.line())
    print(ours.figures.line())
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    ratio = ours.figures.rate / peer.figures.rate
    print(f"  ratio ours / peer at {latency} ms: {ratio:5.2f}x  (load average {load})")
    print(cpu_line("peer", peer))
    print(cpu_line("ours", ours))
    if latency:
        cores = os.cpu_count() or 1
        in_flight = concurrency / (ours.http_per_action * latency / 1000)
        for which, cpu_ms in (("", ours.cpu_ms_total), (", pg-own", ours.cpu_ms_own)):
            ceiling = cores * 1000 / cpu_ms
            bound = min(ceiling, in_flight)
            print(
                f"  ours / min(CPU ceiling{which} {ceiling:.0f}, C/(k*L) {in_flight:.0f}) at {latency} ms:"
                f" {ours.figures.rate / bound:5.2f}"
            )
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actions", type=int, default=2000, help="accepts per measured run (default 2000)")
    parser.add_argument(
        "--latencies", default="0,50", help="emulator latencies in ms, comma-separated (0,50)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes per side (default 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker process (32)")
    parser.add_argument("--pace-latency", type=int, default=50, help="latency of the paced runs (50 ms)")
    parser.add_argument(
        "--floor-pace",
        type=float,
        default=20.0,
        help="also pace each side at this rate, the machine nearly idle (20 actions/s; 0: no)",
    )
    parser.add_argument("--pace-seconds", type=float, default=10.0, help="length of each paced run (10 s)")
    args = parser.parse_args(argv)
    latencies = [int(x) for x in args.latencies.split(",") if x.strip()]
    concurrency = args.workers * args.concurrency
    print(
        f"{args.workers} worker process(es) x {args.concurrency} threads per side; {args.actions} accepts"
        f" on as many pending reservations; {os.cpu_count()} CPUs"
    )
    with scratch_database() as db_url, vhost() as broker_url, EmulatorProcess() as emulator:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(peer_worker.AUDIT_TABLE_SQL)
        env = {
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url,
            **emulator_env(emulator.base_url),
            "LEDGER_PII_KEY": "bench-pii-key",
            "LEDGER_POOL_MAX": str(args.concurrency + 4),
        }
        peer_env = {
            **env,
            "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        }
        settings = Settings.from_env(env)

        assert emulator.pid is not None
        emulator_pid = emulator.pid
        feeds: Mapping[str, tuple[Mapping[str, str], str, LaneFactory, sql.SQL]] = {
            "peer": (peer_env, "peer_worker", PeerLane, PEER_OUTCOMES),
            "ours": (env, "workers", IntakeLane, LEDGER_OUTCOMES),
        }
        memory: dict[str, float] = {}

        def bout(name: str, latency: int, admin: EmulatorAdmin, paced: bool = False) -> Side:
            """Start one side's workers, warm them up, measure them, stop them: the two sides
            never hold PostgreSQL connections at once (the server allows 100)."""
            side_env, app, lanes, outcomes_sql = feeds[name]
            processes = [
                WorkerProcess(side_env, concurrency=args.concurrency, loglevel="WARNING", app=app)
                for _ in range(args.workers)
            ]
            meter = Meter(
                lambda: [w.process.pid for w in processes if w.process is not None], emulator_pid, db_url
            )
            with contextlib.ExitStack() as stack:
                for worker in processes:
                    stack.enter_context(worker)
                measured("warm-up", meter, settings, admin, concurrency, db_url, lanes, outcomes_sql)
                label = f"{'naive peer' if name == 'peer' else 'ours, plain JSON'}, {latency} ms"
                side = measured(label, meter, settings, admin, args.actions, db_url, lanes, outcomes_sql)
                memory[name] = sum(proportional_memory_mb(w.process.pid) for w in processes if w.process)
                if paced:
                    paces = [side.figures.rate * 0.5] + ([args.floor_pace] if args.floor_pace > 0 else [])
                    for pace in paces:
                        run = measured(
                            f"{label}, paced {pace:.0f}/s",
                            meter,
                            settings,
                            admin,
                            max(1, int(pace * args.pace_seconds)),
                            db_url,
                            lanes,
                            outcomes_sql,
                            pace=pace,
                        )
                        side.paced.append(run)
            return side

        with EmulatorAdmin(emulator.base_url) as admin:
            for n, latency in enumerate(latencies):
                admin.clear_faults()
                if latency:
                    admin.add_fault("latency", latency_ms=latency)
                order = ("peer", "ours") if n % 2 == 0 else ("ours", "peer")
                paced = latency == args.pace_latency
                results = {name: bout(name, latency, admin, paced) for name in order}
                report(latency, results["peer"], results["ours"], concurrency)
                if paced:
                    for name in ("ours", "peer"):
                        for run in results[name].paced:
                            print(run.figures.line())
                    target = 2 * latency + 20
                    print(f"  p99 target 2L+20 = {target} ms (ours at half its peak: the first line)")
            for name, megabytes in memory.items():
                print(f"worker memory (PSS, {args.workers} processes), {name}: {megabytes:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
