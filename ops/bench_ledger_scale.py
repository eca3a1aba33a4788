"""Benchmark the ledger at contact-centre scale: ten million rows by default, on a fresh database
that it creates, migrates and drops.

Loading (workers.testing.scale): rows generated in the database with valid hash chains (the
ledger's own ``ledger.event_hash``), inserted with the guards off, with the chain heads kept;
reservations of two actions of three rows each (received, intent, and the transition that settles
the action, as the ledger writes them since migration 0013; every hundredth complete fails, its
third row an outcome row), spread over ``--months`` months up to now. A checkpoint seals all but
the last ``--tail`` rows, which are written after it.

Then it prints: bytes per action (heap, indexes and TOAST of every ledger table), the checkpoint's
seal time, history p50/p99 by reservation, by action and by a time range (one page), the audit
API's pages over HTTP, incremental verify of the tail and the full verify; then ``reservations
ledger compact`` of the months that are over (its time, bytes per action and history again), and
archiving time per million rows (``reservations ledger archive`` of the oldest month, when the
ledger is partitioned).

Run from the repository root: ``.venv/bin/python ops/bench_ledger_scale.py`` (``--rows 5000`` for
a quick look; ``--keep NAME`` keeps the database).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
from bench_console import TOKEN, serve

from workers.ledger import archive, partitions
from workers.ledger.connector import Connector, connect, database_name, drop_database, with_database
from workers.ledger.migrations import migrate
from workers.ledger.models import LedgerRow, Role
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import seal_checkpoint, verify, verify_since
from workers.testing import scale
from workers.testing.benchmarks import ledger_bench_parser

TARGETS = {"by reservation": 5.0, "by action": 5.0, "time range page": 50.0}


def bytes_per_action(url: str) -> tuple[int, int, int]:
    """Bytes of every ledger table (heap, indexes, TOAST; partitions counted once), and actions."""
    with connect(url, None) as conn:
        found = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint,"
            " (SELECT count(*) FROM ledger.actions), (SELECT count(*) FROM ledger.events)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'ledger' AND c.relkind IN ('r', 'm')"
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1]), int(found[2])


def timed(samples: list[float], call: Callable[[], list[LedgerRow]]) -> list[LedgerRow]:
    began = time.perf_counter()
    result = call()
    samples.append((time.perf_counter() - began) * 1000)
    return result


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def time_history(
    url: str, reservations: int, queries: int, t0: datetime, span: timedelta
) -> dict[str, list[float]]:
    """History by a random reservation, by a random action, and one page (100 rows) of a random
    hour, each ``queries`` times, in milliseconds, through the ledger's reader."""
    rng = random.Random(19)
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    connector = Connector(url, Role.READER, min_size=1, max_size=1)
    connector.open()
    with LedgerReader(connector, "bench-key") as reader:
        for _ in range(queries):
            sid = f"WR{rng.randrange(reservations):032x}"
            rows = timed(samples["by reservation"], partial(reader.history, reservation_sid=sid))
            assert rows, f"no history for reservation {sid}"
            action = scale.action_id(rng.randrange(reservations * 2))
            timed(samples["by action"], partial(reader.history, action_id=action))
            if len(samples["time range page"]) < 50:
                since = t0 + span * rng.random() * 0.95
                until = since + timedelta(hours=1)
                timed(
                    samples["time range page"], partial(reader.history, since=since, until=until, limit=100)
                )
    return samples


def time_api(
    url: str, port: int, reservations: int, queries: int, t0: datetime, span: timedelta
) -> list[float]:
    """The audit API's page of a reservation's history and of an hour's events (the first 100
    rows of a random hour), over HTTP."""
    rng = random.Random(20)
    process = serve(url, port)
    samples: list[float] = []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as client:
            for round_ in range(queries + 1):
                start = t0 + span * rng.random() * 0.95
                since, until = start.isoformat(), (start + timedelta(hours=1)).isoformat()
                r = rng.randrange(reservations)
                hour = f"/v1/events?since={since}&until={until}&limit=100"
                for path in (f"/v1/events?reservation_sid=WR{r:032x}", hour):
                    began = time.perf_counter()
                    answer = client.get(path.replace("+", "%2B"))
                    took = (time.perf_counter() - began) * 1000
                    if answer.status_code != 200:
                        raise SystemExit(f"{path} answered {answer.status_code}: {answer.text[:200]}")
                    if round_:
                        samples.append(took)
    finally:
        process.terminate()
        process.wait(10)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = ledger_bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000, help="ledger rows (default 10,000,000)")
    parser.add_argument(
        "--tail", type=int, default=100_000, help="rows written after the checkpoint (default 100,000)"
    )
    parser.add_argument("--months", type=int, default=3, help="months the rows span, up to now (default 3)")
    parser.add_argument("--queries", type=int, default=300, help="history queries of each kind (default 300)")
    parser.add_argument("--port", type=int, default=8768, help="where the audit API listens (default 8768)")
    parser.add_argument("--load-jobs", type=int, default=os.cpu_count() or 2, help="loading connections")
    parser.add_argument("--no-full-verify", action="store_true", help="skip the full verify")
    parser.add_argument("--keep", metavar="NAME", help="load into database NAME and keep it")
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: measure database NAME as it was left (no load)"
    )
    parser.add_argument("--no-archive", action="store_true", help="skip the archive (it detaches a month)")
    parser.add_argument(
        "--no-compact", action="store_true", help="skip `ledger compact` of the months that are over"
    )
    args = parser.parse_args(argv)

    url = with_database(args.database_url, args.keep or f"reservations_bench_scale_{os.getpid()}")
    print(f"database: {database_name(url)} ({'kept' if args.keep else 'dropped afterwards'})")
    try:
        if args.keep and args.reuse:
            t0, span, checkpoint_id = reused(url)
        else:
            t0, span, checkpoint_id = load(url, args)
        measure(url, args, t0, span, checkpoint_id)
        if not args.no_compact:
            compact_time(url, args, t0, span)
        if not args.no_archive:
            archive_time(url)
    finally:
        if not args.keep:
            drop_database(url)
    return 0


def load(url: str, args: argparse.Namespace) -> tuple[datetime, timedelta, int]:
    """A fresh ledger: all but the tail, a checkpoint (timed), the tail, then VACUUM."""
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(days=30 * args.months)
    span = now - t0 - timedelta(minutes=1)
    drop_database(url)
    migrate(url)
    shape = scale.plan(url, args.rows, min(args.tail, args.rows // 10), t0, t0 + span)
    cut = shape.tail_from - 1
    began = time.perf_counter()
    scale.load(url, shape, 0, cut, args.load_jobs)
    loaded = time.perf_counter() - began
    with connect(url, Role.WRITER) as conn:
        began = time.perf_counter()
        checkpoint = seal_checkpoint(conn)
        sealed_in = time.perf_counter() - began
    began = time.perf_counter()
    scale.load(url, shape, cut, shape.top, args.load_jobs)
    loaded += time.perf_counter() - began
    with connect(url, None) as conn:
        # As autovacuum leaves an insert-only table: the time index's ranges summarised.
        conn.execute("VACUUM (ANALYZE)")
    print(f"loaded in {loaded:.0f} s ({args.rows / loaded:,.0f} rows/s), then VACUUM (ANALYZE)")
    print(f"checkpoint {checkpoint.checkpoint_id} sealed {checkpoint.chains:,} chains in {sealed_in:.1f} s")
    return t0, span, checkpoint.checkpoint_id


def reused(url: str) -> tuple[datetime, timedelta, int]:
    """The time span and the first checkpoint of a ledger this benchmark loaded before."""
    with connect(url, None) as conn:
        found = conn.execute(
            "SELECT (SELECT recorded_at FROM ledger.events ORDER BY position LIMIT 1),"
            " (SELECT recorded_at FROM ledger.events ORDER BY position DESC LIMIT 1)"
        ).fetchone()
    assert found is not None
    return found[0], found[1] - found[0], 1


def measure(url: str, args: argparse.Namespace, t0: datetime, span: timedelta, checkpoint_id: int) -> None:
    size, actions, rows = bytes_per_action(url)
    reservations = max(1, rows // scale.ROWS_PER_RESERVATION)
    print(f"ledger: {rows:,} rows, {actions:,} actions, {reservations:,} reservations over {span.days} days")
    print(f"bytes per action: {size / max(actions, 1):,.0f} ({size / 2**20:,.0f} MiB in all ledger tables)")
    print_history(url, args, reservations, t0, span)
    api = time_api(url, args.port, reservations, max(10, args.queries // 10), t0, span)
    p50, p99 = percentiles(api)
    print(f"audit API /v1/events over HTTP (by reservation, by hour): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    with connect(url, Role.READER) as conn:
        began = time.perf_counter()
        problems, checked = verify_since(conn, checkpoint_id)
        took = time.perf_counter() - began
    verdict = "met" if took <= 2 and checked else "NOT met"
    print(
        f"incremental verify since checkpoint {checkpoint_id}: {checked:,} rows in {took:.2f} s"
        f" ({len(problems)} problem(s); target 2 s: {verdict})"
    )
    if not args.no_full_verify:
        with connect(url, Role.READER) as conn:
            began = time.perf_counter()
            problems = verify(conn)
            took = time.perf_counter() - began
        print(f"full verify: {rows:,} rows in {took:.1f} s ({len(problems)} problem(s))")


def print_history(
    url: str, args: argparse.Namespace, reservations: int, t0: datetime, span: timedelta
) -> None:
    samples = time_history(url, reservations, args.queries, t0, span)
    print(f"{'history':<22}{'p50 ms':>9}{'p99 ms':>9}{'target':>9}")
    for name, taken in samples.items():
        p50, p99 = percentiles(taken)
        verdict = "met" if p99 <= TARGETS[name] else "NOT met"
        print(f"{name:<22}{p50:9.2f}{p99:9.2f}{TARGETS[name]:9.0f}  {verdict} ({len(taken)} queries)")


def compact_time(url: str, args: argparse.Namespace, t0: datetime, span: timedelta) -> None:
    """``reservations ledger compact`` of every month that is over: its time, the indexes' bytes
    before and after, bytes per action, and history timed again on the compacted months."""
    with connect(url, Role.OWNER) as conn:
        began = time.perf_counter()
        done = list(
            partitions.compact_closed(conn, archive.bounds(datetime.now(UTC).date().replace(day=1))["start"])
        )
        took = time.perf_counter() - began
    before = sum(c.index_bytes_before for c in done) / 2**20
    after = sum(c.index_bytes_after for c in done) / 2**20
    print(
        f"ledger compact: {len(done)} month(s) in {took:.1f} s,"
        f" their indexes {before:,.0f} MiB to {after:,.0f} MiB"
    )
    size, actions, rows = bytes_per_action(url)
    print(
        f"bytes per action, those months compacted: {size / max(actions, 1):,.0f} ({size / 2**20:,.0f} MiB)"
    )
    print_history(url, args, max(1, rows // scale.ROWS_PER_RESERVATION), t0, span)


def archive_time(url: str) -> None:
    """Archive the oldest month (``reservations ledger archive``) and print the time per million
    rows: export, check against the database, record, and detach when the ledger is partitioned."""
    with connect(url, Role.OWNER) as conn:
        oldest = archive.months_to_archive(conn, datetime.now(UTC).date().replace(day=1))[0]
    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        done = archive.archive_before(url, archive.next_month(oldest), Path(folder))
        took = time.perf_counter() - began
    rows = sum(m.row_count for m in done)
    detached = "detached" if all(m.detached for m in done) else "kept in place: not partitioned"
    print(
        f"archive of {oldest:%Y-%m}: {rows:,} rows in {took:.1f} s"
        f" ({took / max(rows, 1) * 1e6:.1f} s per million rows; {detached})"
    )


if __name__ == "__main__":
    sys.exit(main())
