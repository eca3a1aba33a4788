"""Benchmark the ledger on a fresh database that it creates, migrates and drops.

Prints:
  1. transitions recorded per second (transition row + projection + the registry's outcome, one
     transaction each; an outcome row as well before migration 0013) with 1, 4 and 16
     concurrent writers, each writer its own process and connection (target: at least 2,000/s
     at 16 writers);
  2. history-query latency p50/p99 for one reservation with one million rows in the ledger
     (target: p99 under 5 ms).

The rows up to a million are appended set-based (INSERT ... SELECT generate_series, ten rows
per reservation, 10,000 rows per transaction) through the chain trigger, so they are real,
verifiable chains; ``--verify`` also times ``ledger verify`` over them. The reservation that is
queried is written through the repository.

Run from the repository root: ``.venv/bin/python ops/bench_ledger.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.core.sids import new_sid
from workers.ledger.connector import Connector, connect, database_name, drop_database, with_database
from workers.ledger.events import Transition
from workers.ledger.migrations import migrate
from workers.ledger.models import Outcome, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import verify
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.benchmarks import ledger_bench_parser

ACTIONS_PER_WRITER = 20_000


@dataclass(frozen=True)
class WriterJob:
    url: str
    writer: int
    duration: float
    reservations: int


def _register_actions(url: str, writer_ids: int, reservations: int) -> None:
    """Register the actions every writer will settle, set-based (the registry is not append-only)."""
    with connect(url, None) as conn:
        conn.execute(
            """
            INSERT INTO ledger.actions (action_id, action, workspace_sid, reservation_sid, task_sid)
            SELECT md5(w || ':' || n)::uuid, 'accept', 'WS' || repeat('0', 32),
                   'WR' || lpad(to_hex(w * 1000000 + n %% %(reservations)s), 32, '0'),
                   'WT' || lpad(to_hex(w * 1000000 + n), 32, '0')
              FROM generate_series(1, %(writers)s) AS w, generate_series(1, %(per)s) AS n
            """,
            {"writers": writer_ids, "per": ACTIONS_PER_WRITER, "reservations": reservations},
        )


def _action_id(writer: int, n: int) -> uuid.UUID:
    import hashlib

    return uuid.UUID(hashlib.md5(f"{writer}:{n}".encode()).hexdigest())  # noqa: S324 - ids, not security


def _writer(job: WriterJob, start: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    connector = Connector(job.url, Role.WRITER, min_size=1, max_size=1)
    connector.open()
    ledger = PostgresLedgerWriter(connector, "bench-key")
    start.wait()
    deadline = time.perf_counter() + job.duration
    done = 0
    while time.perf_counter() < deadline and done < ACTIONS_PER_WRITER:
        n = done + 1
        sid = "WR" + format(job.writer * 1_000_000 + n % job.reservations, "032x")
        ledger.append(
            Transition(
                sid,
                action_id=_action_id(job.writer, n),
                from_status="pending",
                to_status="accepted",
                etag_before=f"e{n}",
                etag_after=f"e{n + 1}",
                attempt=1,
                http_status=200,
                duration_ms=12,
                outcome=Outcome.APPLIED,
            )
        )
        done += 1
    ledger.close()
    results.put(done)


def transitions_per_second(url: str, first: int, writers: int, duration: float, reservations: int) -> float:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    results: multiprocessing.Queue[int] = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(WriterJob(url, w, duration, reservations), start, results))
        for w in range(first, first + writers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # let every writer connect before the clock starts
    began = time.perf_counter()
    start.set()
    total = sum(results.get(timeout=duration + 60) for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join()
    return total / elapsed


def load_rows(url: str, rows: int, jobs: int, chunk: int = 10_000) -> float:
    """Append ``rows`` real ledger rows, ten per reservation, set-based, ``chunk`` per transaction.

    They go through the chain trigger like any append (so ``verify`` can check them). Chunks keep
    the advisory locks one transaction holds to a thousand; ``jobs`` connections load chunks in
    parallel (their reservations never overlap).
    """

    def load(first: int) -> None:
        # As the owner: the writer appends only through the record_* functions (migration 0002).
        with connect(url, Role.OWNER) as conn:
            conn.execute(
                """
                INSERT INTO ledger.events (
                    kind, action_id, reservation_sid, workspace_sid, task_sid, worker_sid, from_status,
                    to_status, etag_before, etag_after, attempt, http_status, duration_ms, worker_host,
                    worker_pid
                )
                SELECT (ARRAY['received', 'attempt', 'transition', 'outcome'])[1 + g %% 4],
                       md5(g::text)::uuid,
                       'WF' || lpad(to_hex(g / 10), 32, '0'), 'WS' || repeat('0', 32),
                       'WT' || lpad(to_hex(g / 10), 32, '0'), 'WK' || lpad(to_hex(g %% 500), 32, '0'),
                       'pending', 'accepted', 'e' || g, 'e' || (g + 1), 1, 200, 10, 'bench', 1
                  FROM generate_series(%(first)s::bigint, %(last)s) AS g
                """,
                {"first": first, "last": min(first + chunk - 1, rows)},
            )

    began = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(load, range(1, rows + 1, chunk)))
    with connect(url, None) as conn:
        conn.execute("ANALYZE ledger.events")
    return time.perf_counter() - began


def verify_seconds(url: str) -> tuple[float, int]:
    began = time.perf_counter()
    with connect(url, Role.READER) as conn:
        problems = verify(conn)
    return time.perf_counter() - began, len(problems)


def history_latency(url: str, queries: int) -> tuple[float, float, int]:
    connector = Connector(url, Role.READER, min_size=1, max_size=1)
    connector.open()
    writer = Connector(url, Role.WRITER, min_size=1, max_size=1)
    writer.open()
    ledger, reader = PostgresLedgerWriter(writer, "bench-key"), LedgerReader(connector, "bench-key")
    sid = new_sid("WR")
    for n in range(10):
        ledger.append(
            Transition(
                sid, from_status="pending", to_status="accepted", etag_before=str(n), etag_after=str(n + 1)
            )
        )
    samples = []
    for _ in range(queries):
        began = time.perf_counter()
        rows = reader.history(reservation_sid=sid)
        samples.append((time.perf_counter() - began) * 1000)
    ledger.close()
    reader.close()
    quantiles = statistics.quantiles(samples, n=100)
    return quantiles[49], quantiles[98], len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = ledger_bench_parser(__doc__)
    parser.add_argument("--writers", default="1,4,16", help="concurrent writer counts (default 1,4,16)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per writer count (default 5)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger rows for the history query")
    parser.add_argument("--queries", type=int, default=2000, help="history queries to time (default 2000)")
    parser.add_argument(
        "--reservations", type=int, default=1000, help="reservations per writer (default 1000)"
    )
    parser.add_argument(
        "--load-jobs", type=int, default=os.cpu_count() or 2, help="connections loading rows (default: CPUs)"
    )
    parser.add_argument("--verify", action="store_true", help="also time `ledger verify` over the ledger")
    args = parser.parse_args(argv)
    writer_counts = [int(w) for w in args.writers.split(",")]

    url = with_database(args.database_url, f"reservations_bench_{os.getpid()}")
    drop_database(url)
    migrate(url)
    try:
        print(f"database: {database_name(url)} (fresh, dropped afterwards)")
        _register_actions(url, sum(writer_counts), args.reservations)
        first = 1
        for writers in writer_counts:
            rate = transitions_per_second(url, first, writers, args.duration, args.reservations)
            first += writers
            print(f"transitions/s with {writers:>2} writers: {rate:8.0f}")
        with connect(url, None) as conn:
            existing = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
        filler = max(args.rows - int(existing[0] if existing else 0), 0)
        seconds = load_rows(url, filler, args.load_jobs)
        print(f"appended {filler} more rows in {seconds:.1f}s (ledger now {args.rows} rows)")
        p50, p99, n = history_latency(url, args.queries)
        print(
            f"history of one reservation ({n} rows), {args.queries} queries:"
            f" p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
        if args.verify:
            took, problems = verify_seconds(url)
            print(f"verify over the whole ledger: {took:.1f}s, {problems} problem(s)")
    finally:
        drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
