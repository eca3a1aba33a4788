"""Where PostgreSQL's time goes in the ledger writes of one accept, function by function.

``ops/bench_peer.py`` shows that this project's PostgreSQL backends spend a few ms of CPU per
action where the naive worker's spend a fraction of one. This tool replays the writes of the
common case, one accept on a reservation the ledger has never seen (lock, ``receive``, the
"first seen" transition, the write-ahead intent, the applied transition with its outcome,
unlock), on a fresh database over one connection, with PostgreSQL's ``track_functions = 'pl'``,
and prints per accept: the calls, total and self time of each ledger function (self time
includes the SQL each runs: index upkeep, the hash chain's reads and writes), the backend's CPU
(from /proc, so Linux only, when the server runs here) and the wall time. The connection runs
as the owner of the database's URL (a superuser can set ``track_functions``) and then as the
writer role, as the workers do.

With ``--history-months N`` the database first holds N months of history (``--history-rows``
rows, whole reservations, loaded by the scale loader as ``ops/bench_ledger_scale.py`` loads
them, one partition a month): what an accept costs on a ledger kept that long, rather than on
a new one.

Run from the repository root: ``.venv/bin/python ops/bench_ledger_path.py [--accepts 1000]
[--history-months 12]``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from bench_peer import cpu_seconds
from bench_workers import scratch_database

from workers.core.action import Action, ActionKind
from workers.core.sids import new_sid
from workers.ledger.connector import BoundConnection, prepare
from workers.ledger.events import Intent, Transition
from workers.ledger.models import Outcome, Role, Source
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing import scale

FUNCTION_STATS = """
SELECT funcname, calls, total_time, self_time
  FROM pg_stat_user_functions
 WHERE schemaname = 'ledger'
 ORDER BY self_time DESC
"""


def one_accept(writer: PostgresLedgerWriter) -> None:
    """The ledger writes of an accept on a reservation first seen on the fetch before it."""
    action = Action(uuid.uuid4(), ActionKind.ACCEPT, new_sid("WS"), new_sid("WR"), task_sid=new_sid("WT"))
    sid = action.reservation_sid
    with writer.lock(sid) as locked:
        locked.receive(action)
        locked.append(
            Transition(
                sid,
                from_status=None,
                to_status="pending",
                etag_before=None,
                etag_after="1",
                workspace_sid=action.workspace_sid,
                task_sid=action.task_sid,
                detail="first seen on fetch",
                source=Source.FETCH,
            )
        )
        arguments = {"reservation_status": "accepted"}
        locked.append(
            Intent(
                action.action_id,
                attempt=1,
                etag_before="1",
                from_status="pending",
                to_status="accepted",
                arguments=arguments,
            )
        )
        locked.append(
            Transition(
                sid,
                from_status="pending",
                to_status="accepted",
                etag_before="1",
                etag_after="2",
                action_id=action.action_id,
                outcome=Outcome.APPLIED,
                workspace_sid=action.workspace_sid,
                task_sid=action.task_sid,
                attempt=1,
                http_status=200,
                source=Source.ACTION,
            )
        )


def backend_cpu(pid: int) -> float | None:
    """CPU seconds of a backend of a server on this machine (None when it is elsewhere)."""
    return cpu_seconds([pid]) if Path(f"/proc/{pid}").exists() else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accepts", type=int, default=1000, help="accepts replayed (default 1000)")
    parser.add_argument(
        "--history-months",
        type=int,
        default=0,
        help="months of history the ledger holds first (default 0: a new ledger)",
    )
    parser.add_argument(
        "--history-rows",
        type=int,
        default=600_000,
        help="rows of that history (default 600,000)",
    )
    args = parser.parse_args(argv)
    n = args.accepts
    with scratch_database() as url:
        if args.history_months > 0:
            end = datetime.now(UTC) - timedelta(minutes=1)
            shape = scale.plan(url, args.history_rows, 0, end - timedelta(days=30 * args.history_months), end)
            scale.load(url, shape, 0, shape.top)
            print(f"history: {args.history_rows:,} rows over {args.history_months} months")
        run(url, n)
    return 0


def run(url: str, n: int) -> None:
    """Replay ``n`` accepts on ``url`` and print where the backend's time went."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET track_functions = 'pl'")
        pid = conn.info.backend_pid
        prepare(conn, Role.WRITER)
        writer = PostgresLedgerWriter(BoundConnection(conn), "bench-pii-key")
        for _ in range(20):  # warm the plan caches: measured, they would count once
            one_accept(writer)
        conn.execute("RESET ROLE")
        conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once the backend is idle
        conn.execute("SELECT pg_stat_reset()")  # so the warm-up's counts go too
        prepare(conn, Role.WRITER)
        cpu_before = backend_cpu(pid)
        started = time.perf_counter()
        for _ in range(n):
            one_accept(writer)
        wall = time.perf_counter() - started
        cpu_after = backend_cpu(pid)
        conn.execute("RESET ROLE")
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")  # the counts are flushed before this one runs
        with psycopg.connect(url, autocommit=True) as reader:
            rows = reader.execute(FUNCTION_STATS).fetchall()
    print(f"{n} accepts on new reservations, one connection; per accept:")
    print(f"  {'function':<20} {'calls':>6} {'total ms':>9} {'self ms':>8}")
    for name, calls, total, self_time in rows:
        print(f"  {name:<20} {calls / n:6.2f} {total / n:9.3f} {self_time / n:8.3f}")
    if cpu_before is not None and cpu_after is not None:
        print(f"  backend CPU {(cpu_after - cpu_before) * 1000 / n:.2f} ms", end="; ")
    print(f"wall {wall * 1000 / n:.2f} ms")


if __name__ == "__main__":
    raise SystemExit(main())
