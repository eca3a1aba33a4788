"""Benchmark the audit console's pages with a million ledger rows, on a fresh database that it
creates, migrates and drops.

Loads ``--rows`` real ledger rows set-based through the chain trigger (so every chain verifies):
actions of four rows each (received, intent, transition, outcome; three actions a reservation),
1 % of them failed and 0.5 % each indeterminate and dead_lettered, and registers the actions in
``ledger.actions`` with outcomes spread over the last day; then writes one reservation's story
through the ledger's writer, seals a checkpoint, starts the real ``reservations audit-api``
command and times each page over HTTP (p50, p95 and the slowest of ``--requests``), with the
slowest as a ratio of the 200 ms target.

Run from the repository root: ``.venv/bin/python ops/bench_console.py``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.sids import new_sid
from workers.errors import LedgerUnavailable
from workers.ledger.connector import (
    Connection,
    Connector,
    connect,
    database_name,
    drop_database,
    with_database,
)
from workers.ledger.events import Attempt, Settle, Transition
from workers.ledger.migrations import migrate
from workers.ledger.models import Role
from workers.ledger.verify import seal_checkpoint
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.benchmarks import ledger_bench_parser

TARGET_MS = 200.0
# A fresh token each run: the benchmark's own API is reachable by anyone on this machine meanwhile.
TOKEN = secrets.token_urlsafe(24)
ROWS_PER_ACTION = 4

# Four rows per action g // 4; an outcome row carries the action's outcome.
LOAD_EVENTS = """
INSERT INTO ledger.events (
    kind, action_id, action, reservation_sid, workspace_sid, task_sid, worker_sid, from_status, to_status,
    etag_before, etag_after, attempt, http_status, duration_ms, outcome, correlation_id, worker_host,
    worker_pid, source
)
SELECT (ARRAY['received', 'intent', 'transition', 'outcome'])[1 + g %% 4],
       md5((g / 4)::text)::uuid, 'accept',
       'WR' || lpad(to_hex(g / 12), 32, '0'), 'WS' || repeat('0', 32),
       'WT' || lpad(to_hex(g / 12), 32, '0'), 'WK' || lpad(to_hex(g %% 500), 32, '0'),
       'pending', 'accepted', 'e' || g, 'e' || (g + 1), 1, 200, 10,
       CASE WHEN g %% 4 = 3 THEN
         CASE WHEN (g / 4) %% 100 = 0 THEN 'failed'
              WHEN (g / 4) %% 200 = 1 THEN 'indeterminate'
              WHEN (g / 4) %% 200 = 2 THEN 'dead_lettered'
              ELSE 'applied' END
       END,
       'corr-' || (g / 40), 'bench', 1, CASE WHEN g %% 4 = 2 THEN 'action' END
  FROM generate_series(%(first)s::bigint, %(last)s) AS g
"""

# The same actions in the registry, settled over the last day.
LOAD_ACTIONS = """
INSERT INTO ledger.actions (
    action_id, action, workspace_sid, reservation_sid, task_sid, received_at, attempts, outcome, outcome_at
)
SELECT md5(a::text)::uuid, 'accept', 'WS' || repeat('0', 32), 'WR' || lpad(to_hex(a / 3), 32, '0'),
       'WT' || lpad(to_hex(a / 3), 32, '0'), now() - make_interval(secs => a %% 86400), 1,
       CASE WHEN a %% 100 = 0 THEN 'failed' WHEN a %% 200 = 1 THEN 'indeterminate'
            WHEN a %% 200 = 2 THEN 'dead_lettered' ELSE 'applied' END,
       now() - make_interval(secs => a %% 86400)
  FROM generate_series(%(first)s::bigint, %(last)s) AS a
"""


def load(url: str, rows: int, jobs: int, chunk: int = 12_000) -> float:
    """Append ``rows`` ledger rows and register their actions, ``chunk`` rows per transaction,
    ``jobs`` connections each loading its share (one connection each: the cluster is shared)."""

    def share(statement: str, total: int, job: int) -> None:
        starts = range(job * chunk, total, jobs * chunk)
        with patient_connection(url) as conn:
            for first in starts:
                conn.execute(statement, {"first": first, "last": min(first + chunk - 1, total - 1)})

    began = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda job: share(LOAD_EVENTS, rows, job), range(jobs)))
        list(pool.map(lambda job: share(LOAD_ACTIONS, rows // ROWS_PER_ACTION, job), range(jobs)))
    with patient_connection(url) as conn:
        conn.execute("ANALYZE ledger.events")
        conn.execute("ANALYZE ledger.actions")
    return time.perf_counter() - began


@contextlib.contextmanager
def patient_connection(url: str, wait: float = 120.0) -> Iterator[Connection]:
    """A connection as the owner, waiting while the shared cluster has no free slot."""
    deadline = time.monotonic() + wait
    with contextlib.ExitStack() as stack:
        while True:
            try:
                conn = stack.enter_context(connect(url, Role.OWNER))
                break
            except LedgerUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield conn


def write_story(url: str) -> tuple[str, uuid.UUID, uuid.UUID]:
    """One reservation accepted and completed through the writer, and a failed action."""
    connector = Connector(url, Role.WRITER, min_size=1, max_size=1)
    connector.open()
    with PostgresLedgerWriter(connector, "bench-key") as ledger:
        workspace, sid, task = new_sid("WS"), new_sid("WR"), new_sid("WT")
        etag = 1
        applied = uuid.uuid4()
        walk = ((ActionKind.ACCEPT, "pending", "accepted"), (ActionKind.COMPLETE, "accepted", "completed"))
        for kind, before, after in walk:
            action = Action(
                applied if kind == ActionKind.ACCEPT else uuid.uuid4(), kind, workspace, sid, task_sid=task
            )
            ledger.receive(action)
            ledger.append(Attempt(action.action_id, attempt=1, etag_before=str(etag), http_status=200))
            ledger.append(
                Transition(
                    sid,
                    from_status=before,
                    to_status=after,
                    etag_before=str(etag),
                    etag_after=str(etag + 1),
                    action_id=action.action_id,
                    outcome=Outcome.APPLIED,
                    workspace_sid=workspace,
                    task_sid=task,
                    attempt=1,
                    http_status=200,
                )
            )
            etag += 1
        broken = Action(uuid.uuid4(), ActionKind.ACCEPT, workspace, new_sid("WR"), task_sid=task)
        ledger.receive(broken)
        ledger.append(Attempt(broken.action_id, attempt=1, http_status=404, twilio_error_code=20404))
        ledger.append(Settle(broken.action_id, Outcome.FAILED, http_status=404, twilio_error_code=20404))
    return sid, applied, broken.action_id


def serve(url: str, port: int) -> subprocess.Popen[bytes]:
    command = [str(Path(sys.executable).parent / "reservations"), "audit-api", "--port", str(port)]
    env = {**os.environ, "DATABASE_URL": url, "AUDIT_API_TOKEN": TOKEN, "AUDIT_VERIFY_INTERVAL": "0"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("the audit API did not become ready")


def time_pages(base: str, pages: dict[str, str], requests: int) -> dict[str, list[float]]:
    """Each page ``requests`` times, in turn (after one warm-up round), in milliseconds."""
    samples: dict[str, list[float]] = {name: [] for name in pages}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        for round_ in range(requests + 1):
            for name, path in pages.items():
                began = time.perf_counter()
                answer = client.get(path)
                took = (time.perf_counter() - began) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: {path} answered {answer.status_code}: {answer.text[:200]}")
                if round_:
                    samples[name].append(took)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = ledger_bench_parser(__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="ledger rows (default 1,000,000)")
    parser.add_argument("--requests", type=int, default=30, help="requests per page (default 30)")
    parser.add_argument("--port", type=int, default=8767, help="where the audit API listens (default 8767)")
    parser.add_argument(
        "--load-jobs", type=int, default=os.cpu_count() or 2, help="connections loading rows (default: CPUs)"
    )
    parser.add_argument(
        "--keep", metavar="NAME", help="load into database NAME and keep it (to look at plans)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: time the pages on database NAME as it was left"
    )
    args = parser.parse_args(argv)

    url = with_database(args.database_url, args.keep or f"reservations_bench_console_{os.getpid()}")
    reuse = bool(args.keep and args.reuse)
    if not reuse:
        drop_database(url)
        migrate(url)
    process = None
    try:
        print(f"database: {database_name(url)} (fresh, {'kept' if args.keep else 'dropped afterwards'})")
        # The story first and sealed (sealing every loaded chain would take longer than the rest).
        sid, applied, failed = write_story(url)
        with connect(url, Role.WRITER) as conn:
            checkpoint = seal_checkpoint(conn) if not reuse else None
        seconds = load(url, args.rows, args.load_jobs) if not reuse else 0.0
        with connect(url, None) as conn:
            found = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
            registered = conn.execute("SELECT count(*) FROM ledger.actions").fetchone()
        print(
            f"ledger: {found[0] if found else 0} rows, {registered[0] if registered else 0} actions"
            f" (loaded in {seconds:.1f}s)"
            + (f"; checkpoint {checkpoint.checkpoint_id} sealed the story's chains" if checkpoint else "")
        )
        process = serve(url, args.port)
        hour_ago = time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() - 3600))
        pages = {
            "overview": "/ui/",
            "search by reservation": f"/ui/search?reservation_sid={sid}",
            "search by outcome": "/ui/search?outcome=failed",
            "search by correlation id": "/ui/search?correlation_id=corr-12345",
            "search by time (last hour)": f"/ui/search?since={hour_ago}",
            "search, page 2": "/ui/search?outcome=indeterminate&after=0:0",
            "reservation story": f"/ui/reservations/{sid}",
            "story of a loaded reservation": f"/ui/reservations/WR{format(4242, '032x')}",
            "action page": f"/ui/actions/{applied}",
            "failed action page": f"/ui/actions/{failed}",
            "story export (CSV)": f"/ui/reservations/{sid}?export=csv",
            "overview export (JSON)": "/ui/?export=json",
        }  # fmt: skip
        samples = time_pages(f"http://127.0.0.1:{args.port}", pages, args.requests)
        print(f"{'page':<32}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}   max / {TARGET_MS:.0f} ms")
        worst = 0.0
        for name, taken in samples.items():
            p95 = statistics.quantiles(taken, n=20)[18]
            worst = max(worst, max(taken) / TARGET_MS)
            print(
                f"{name:<32}{statistics.median(taken):9.1f}{p95:9.1f}{max(taken):9.1f}"
                f"   {max(taken) / TARGET_MS:.2f}"
            )
        print(f"slowest answer over all pages: {worst:.2f} of the {TARGET_MS:.0f} ms target")
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        if not args.keep:
            drop_database(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
