"""Bytes per action in the ledger: what a realistic mix of actions costs on disk, table by table.

Creates a fresh database next to ``--database-url``, migrates it, writes ``--actions`` actions
through the ledger's real write path (``PostgresLedgerWriter``: the same ``record_*`` functions
the workers call, in the order the applier calls them), then prints for every table of the
``ledger`` schema (each partitioned table summed over its partitions) the bytes of its heap, of
each index and of its TOAST (table and index), per action, and the rows per action; and the
total. The database is dropped afterwards.

The mix, per reservation (each is first seen on a fetch, as the applier records it): an accept
(45 %, its TaskRouter event echoed), a reject (10 %), a call with PII parameters (10 %), an
accept through two 412 conflicts (10 %), a failed update (5 %), an expired action (5 %), a
conference with parameters (5 %), a dequeue failed with 400 then accepted (5 %), an accept lost
and found on fetch (5 %); a third of the accepted reservations are then completed by a second
action and a fifth time out or are completed through TaskRouter's events. Every row carries a
trace id, as with tracing on.

Sizes are main forks (``pg_relation_size``) after the writes, without a VACUUM: what the
workers leave. Empty partitions (made ahead of time) cost a page or two per index whatever the
volume: they are printed apart and left out of the per-action figure. A last line gives the total
once the dead versions of the rows updated in place (the registry, the projection, the chain
heads) are reclaimed (their live rows copied into fresh tables with the same indexes): at scale
autovacuum lets that space be reused. The next line adds what ``reservations ledger compact``
does to a month once it is over (its indexes rebuilt packed full): what an action costs for good.
The last line is a study, not the ledger: the same rows copied into the most compact encoding
that keeps every fact of these rows exactly (``ops/ledger_encoding_study.sql``: raw 16-byte SIDs and ids,
one-byte codes, no stored ``prev_hash``, the projection and the chain heads in one table), to
show what a change of the row format could save.

Run from the repository root: ``.venv/bin/python ops/bench_ledger_size.py``.
"""

from __future__ import annotations

import os
import random
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import Connection, sql

from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.sids import new_sid
from workers.ledger import partitions
from workers.ledger.connector import Connector, connect, drop_database, with_database
from workers.ledger.events import Attempt, Conflict, Intent, Settle, Transition
from workers.ledger.migrations import migrate
from workers.ledger.models import Role, Source
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.benchmarks import ledger_bench_parser

SIZES = """
WITH leaf AS (
    SELECT c.oid, coalesce(pg_partition_root(c.oid), c.oid)::regclass::text AS root, c.reltoastrelid,
           pg_relation_size(c.oid) AS heap
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'ledger'
     WHERE c.relkind = 'r'
)
SELECT l.root, 'heap' AS part, l.heap AS bytes, l.heap = 0 AS empty FROM leaf l
UNION ALL
SELECT l.root, 'toast', pg_relation_size(l.reltoastrelid) + coalesce((
           SELECT sum(pg_relation_size(t.indexrelid)) FROM pg_index t WHERE t.indrelid = l.reltoastrelid
       ), 0), l.heap = 0
  FROM leaf l WHERE l.reltoastrelid <> 0
UNION ALL
SELECT l.root, coalesce(pg_partition_root(x.indexrelid), x.indexrelid)::regclass::text,
       pg_relation_size(x.indexrelid), l.heap = 0
  FROM leaf l JOIN pg_index x ON x.indrelid = l.oid
"""


# The ledger's tables that are updated in place (the rest only grow): each update leaves a dead
# row version behind until (auto)vacuum makes its space reusable.
UPDATED_IN_PLACE = ("actions", "reservations", "chain_heads")
STUDY_SQL = Path(__file__).with_name("ledger_encoding_study.sql")


@dataclass
class Table:
    heap: int = 0
    toast: int = 0
    rows: int = 0
    indexes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def total(self) -> int:
        return self.heap + self.toast + sum(self.indexes.values())


class Mix:
    """Writes one reservation's story at a time, as the applier and the events API would."""

    def __init__(self, ledger: PostgresLedgerWriter, rng: random.Random) -> None:
        self.ledger = ledger
        self.rng = rng
        self.actions = 0
        self.workspace = new_sid("WS")
        self.workers = [new_sid("WK") for _ in range(50)]

    def trace(self) -> str:
        return secrets.token_hex(16)

    def request(self) -> str:
        return "RQ" + secrets.token_hex(16)

    def receive(self, kind: ActionKind, sid: str, task: str, worker: str, **extra: object) -> Action:
        action = Action(
            action_id=uuid.uuid4(),
            action=kind,
            workspace_sid=self.workspace,
            reservation_sid=sid,
            task_sid=task,
            worker_sid=worker,
            correlation_id=f"ticket-{self.rng.randrange(10**9):09d}",
            producer="routing-service",
            **extra,  # type: ignore[arg-type]
        )
        self.ledger.receive(action, trace_id=self.trace())
        self.actions += 1
        return action

    def fetched(self, sid: str, task: str, worker: str, status: str, etag: int, before: str | None) -> None:
        self.ledger.append(
            Transition(
                sid,
                from_status=before,
                to_status=status,
                etag_before=None,
                etag_after=str(etag),
                workspace_sid=self.workspace,
                task_sid=task,
                worker_sid=worker,
                twilio_request_id=self.request(),
                detail="first seen on fetch"
                if before is None
                else "observed on fetch: changed outside this run",
                source=Source.FETCH,
                trace_id=self.trace(),
            )
        )

    def intent(self, action: Action, attempt: int, etag: int, src: str, dst: str | None) -> None:
        arguments = {"reservation_status": dst} if dst else dict(action.params)
        self.ledger.append(
            Intent(action.action_id, attempt, str(etag), src, dst, arguments, trace_id=self.trace())
        )

    def applied(self, action: Action, attempt: int, src: str, dst: str, etag: int, **extra: object) -> None:
        self.ledger.append(
            Transition(
                action.reservation_sid,
                from_status=src,
                to_status=dst,
                etag_before=str(etag),
                etag_after=str(etag + 1),
                action_id=action.action_id,
                outcome=Outcome.APPLIED,
                workspace_sid=action.workspace_sid,
                task_sid=action.task_sid,
                worker_sid=action.worker_sid,
                attempt=attempt,
                http_status=200,
                twilio_request_id=self.request(),
                duration_ms=self.rng.randrange(40, 400),
                trace_id=self.trace(),
                **extra,  # type: ignore[arg-type]
            )
        )

    def event(self, sid: str, dst: str) -> None:
        self.ledger.append(
            Transition(
                sid,
                from_status=None,
                to_status=dst,
                etag_before=None,
                etag_after=None,
                workspace_sid=self.workspace,
                detail=f"reservation.{dst} event EV{secrets.token_hex(16)}",
                source=Source.EVENT,
                trace_id=self.trace(),
            )
        )

    def settle(self, action: Action, outcome: Outcome, **extra: object) -> None:
        self.ledger.append(Settle(action.action_id, outcome, trace_id=self.trace(), **extra))  # type: ignore[arg-type]

    def first_run(
        self, kind: ActionKind, sid: str, task: str, worker: str, target: str, **extra: object
    ) -> Action:
        """An action received for a reservation first seen on a fetch, and the intent of its update."""
        a = self.receive(kind, sid, task, worker, **extra)
        self.fetched(sid, task, worker, "pending", 1, None)
        self.intent(a, 1, 1, "pending", target)
        return a

    def refused(self, a: Action, status: int, code: int | None, detail: str, duration_ms: int) -> None:
        """TaskRouter's answer to the update: an error."""
        self.ledger.append(
            Attempt(
                a.action_id,
                1,
                "1",
                http_status=status,
                twilio_error_code=code,
                twilio_request_id=self.request(),
                duration_ms=duration_ms,
                detail=detail,
                trace_id=self.trace(),
            )
        )

    def story(self) -> None:
        sid, task, worker = new_sid("WR"), new_sid("WT"), self.rng.choice(self.workers)
        roll = self.rng.random()
        accepted = False
        if roll < 0.45:
            a = self.first_run(ActionKind.ACCEPT, sid, task, worker, "accepted")
            self.applied(a, 1, "pending", "accepted", 1, source=Source.ACTION)
            self.event(sid, "accepted")  # the echo of our own accept: no new row
            accepted = True
        elif roll < 0.55:
            a = self.first_run(ActionKind.REJECT, sid, task, worker, "rejected")
            self.applied(a, 1, "pending", "rejected", 1)
        elif roll < 0.65:
            params = {
                "instruction": "call",
                "call_from": "+15550001111",
                "call_to": f"+1555{self.rng.randrange(10**7):07d}",
                "call_url": "https://example.com/twiml/agent",
                "call_accept": True,
                "call_status_callback_url": "https://example.com/status",
            }
            a = self.first_run(ActionKind.CALL, sid, task, worker, "accepted", params=params)
            self.applied(a, 1, "pending", "accepted", 1)
            accepted = True
        elif roll < 0.75:
            a = self.receive(ActionKind.ACCEPT, sid, task, worker)
            self.fetched(sid, task, worker, "pending", 1, None)
            for attempt_etag in (1, 2):
                self.intent(a, 1, attempt_etag, "pending", "accepted")
                self.ledger.append(
                    Conflict(
                        a.action_id,
                        1,
                        str(attempt_etag),
                        str(attempt_etag + 1),
                        "pending",
                        twilio_error_code=20412,
                        twilio_request_id=self.request(),
                        detail="HTTP 412: precondition failed",
                        trace_id=self.trace(),
                    )
                )
            self.intent(a, 1, 3, "pending", "accepted")
            self.applied(a, 1, "pending", "accepted", 3)
            accepted = True
        elif roll < 0.80:
            a = self.first_run(ActionKind.ACCEPT, sid, task, worker, "accepted")
            self.refused(a, 404, 20404, "HTTP 404: the requested resource was not found", 88)
            self.settle(
                a,
                Outcome.FAILED,
                http_status=404,
                twilio_error_code=20404,
                detail="HTTP 404: the requested resource was not found",
            )
        elif roll < 0.85:
            a = self.receive(ActionKind.ACCEPT, sid, task, worker)
            self.settle(a, Outcome.EXPIRED, detail="past not_after 2026-11-30T18:00:00+00:00")
        elif roll < 0.90:
            params = {
                "instruction": "conference",
                "from_": "+15550002222",
                "to": f"client:agent{self.rng.randrange(999)}",
                "status_callback": "https://example.com/conference",
                "timeout": 20,
                "record": True,
            }
            a = self.first_run(ActionKind.CONFERENCE, sid, task, worker, "accepted", params=params)
            self.applied(a, 1, "pending", "accepted", 1)
            accepted = True
        elif roll < 0.95:
            params = {
                "instruction": "dequeue",
                "dequeue_from": "+15550003333",
                "dequeue_post_work_activity_sid": "WA" + "1" * 32,
            }
            a = self.first_run(ActionKind.DEQUEUE, sid, task, worker, "accepted", params=params)
            self.refused(a, 503, None, "HTTP 503: service unavailable", 1200)
            self.intent(a, 2, 1, "pending", "accepted")
            self.applied(a, 2, "pending", "accepted", 1)
            accepted = True
        else:
            a = self.first_run(ActionKind.ACCEPT, sid, task, worker, "accepted")
            # The answer was lost; the next run finds the reservation accepted on a fetch.
            self.applied(
                a, 1, "pending", "accepted", 1, source=Source.FETCH, detail="confirmed after a lost answer"
            )
            accepted = True
        if not accepted:
            return
        later = self.rng.random()
        if later < 0.33:
            b = self.receive(ActionKind.COMPLETE, sid, task, worker)
            self.intent(b, 1, 2, "accepted", "completed")
            self.applied(b, 1, "accepted", "completed", 2)
            self.event(sid, "completed")
        elif later < 0.53:
            self.event(sid, self.rng.choice(["completed", "wrapping"]))


def write_mix(url: str, actions: int, seed: int) -> int:
    connector = Connector(url, Role.WRITER, min_size=1, max_size=1)
    connector.open()
    try:
        mix = Mix(
            PostgresLedgerWriter(connector, "bench-key", worker_host="worker-7f9c2d"), random.Random(seed)
        )
        while mix.actions < actions:
            mix.story()
        return mix.actions
    finally:
        connector.close()


def measure(url: str) -> tuple[dict[str, Table], int]:
    """Each table's heap, TOAST and indexes (partitions summed), and the bytes of empty partitions."""
    tables: dict[str, Table] = defaultdict(Table)
    empty_bytes = 0
    with connect(url, None, autocommit=True) as conn:
        for root, part, size, empty in conn.execute(SIZES).fetchall():
            if empty:
                empty_bytes += int(size)
            elif part == "heap":
                tables[root].heap += int(size)
            elif part == "toast":
                tables[root].toast += int(size)
            else:
                tables[root].indexes[part] += int(size)
        for name, table in tables.items():
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*name.split(".")))
            table.rows = int(conn.execute(query).fetchone()[0])  # type: ignore[index]
    return tables, empty_bytes


def live_size(conn: Connection, name: str) -> Table:
    """What the live rows of ``ledger.<name>`` take, inserted afresh into a copy with its indexes:
    the dead versions its updates left are not counted (autovacuum makes their space reusable;
    VACUUM FULL cannot reclaim them while any transaction of the cluster is older)."""
    copy = sql.Identifier("size_scratch", name)
    conn.execute("CREATE SCHEMA IF NOT EXISTS size_scratch")
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING INDEXES)").format(copy, sql.Identifier("ledger", name))
    )
    conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(copy, sql.Identifier("ledger", name)))
    row = conn.execute(
        "SELECT pg_relation_size(c.oid), coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0)"
        " FROM pg_class c WHERE c.oid = %s::regclass",
        (f"size_scratch.{name}",),
    ).fetchone()
    assert row is not None
    table = Table(heap=int(row[0]), toast=int(row[1]))
    for index, size in conn.execute(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index"
        " WHERE indrelid = %s::regclass",
        (f"size_scratch.{name}",),
    ).fetchall():
        table.indexes[index] = int(size)
    return table


def encoding_study(url: str, settled: dict[str, Table]) -> tuple[int, int]:
    """Run the study on ``url``'s ledger: (the bytes of every table of it that holds rows, those
    of its events). ``ledger.schema_migrations`` counts as it is (``settled``)."""
    sizes: dict[str, int] = {}
    with connect(url, None, autocommit=True) as conn:
        conn.execute(STUDY_SQL.read_text(encoding="utf-8"))
        rows = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " WHERE c.relnamespace = 'encoding_study'::regnamespace AND c.relkind = 'r'"
        ).fetchall()
        for name, size in rows:
            query = sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier("encoding_study", name))
            if conn.execute(query).fetchone() == (True,):
                sizes[str(name)] = int(size)
    return sum(sizes.values()) + settled["ledger.schema_migrations"].total, sizes["events"]


def report(tables: dict[str, Table], empty_bytes: int, actions: int) -> None:
    def per(size: int) -> str:
        return f"{size / actions:8.1f}"

    print(f"{'relation':<52} {'B/action':>8}  {'rows/action':>11}")
    for name, table in sorted(tables.items(), key=lambda item: -item[1].total):
        if table.total == 0:
            continue
        print(f"{name:<52} {per(table.total)}  {table.rows / actions:11.2f}")
        print(f"  {'heap':<50} {per(table.heap)}")
        for index, size in sorted(table.indexes.items(), key=lambda item: -item[1]):
            print(f"  {'index ' + index:<50} {per(size)}")
        if table.toast:
            print(f"  {'TOAST':<50} {per(table.toast)}")
    total = sum(table.total for table in tables.values())
    print(f"{'TOTAL (every ledger table, partitions with rows)':<52} {per(total)}")
    print(f"empty partitions (fixed, not per action): {empty_bytes} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = ledger_bench_parser(__doc__)
    parser.add_argument("--actions", type=int, default=1000, help="actions to write (default 1000)")
    parser.add_argument("--seed", type=int, default=19, help="the mix's random seed (default 19)")
    parser.add_argument("--keep", action="store_true", help="keep the database (printed) for a look")
    args = parser.parse_args(argv)
    url = with_database(args.database_url, f"reservations_size_{os.getpid()}")
    drop_database(url)
    migrate(url)
    try:
        actions = write_mix(url, args.actions, args.seed)
        tables, empty_bytes = measure(url)
        print(f"{actions} actions written through PostgresLedgerWriter")
        report(tables, empty_bytes, actions)
        settled = dict(tables)
        with connect(url, None, autocommit=True) as conn:
            for name in UPDATED_IN_PLACE:
                settled[f"ledger.{name}"] = live_size(conn, name)
        total = sum(table.total for table in settled.values())
        print(
            f"{'TOTAL once dead row versions are reclaimed':<52} {total / actions:8.1f}"
            f"  ({', '.join(UPDATED_IN_PLACE)} counted as their live rows take, copied into fresh tables)"
        )
        with connect(url, Role.OWNER) as conn, partitions.compacting(conn):
            for part in partitions.list_partitions(conn):
                if part.has_rows:  # the month the rows are in, as `ledger compact` leaves it once it is over
                    partitions.compact_partition(conn, part.partition_name)
        compacted, _empty = measure(url)
        settled["ledger.events"] = compacted["ledger.events"]
        events = compacted["ledger.events"]
        total = sum(table.total for table in settled.values())
        print(
            f"{'TOTAL once reclaimed and the month compacted':<52} {total / actions:8.1f}"
            f"  (`reservations ledger compact`: ledger.events {events.total / actions:.1f},"
            f" its indexes {sum(events.indexes.values()) / actions:.1f})"
        )
        study, study_events = encoding_study(url, settled)
        print(
            f"{'STUDY, not the ledger: the most compact exact encoding':<52} {study / actions:8.1f}"
            f"  (ops/{STUDY_SQL.name}: ledger.events {study_events / actions:.1f}; the registry,"
            " the projection and the chain heads as it stores them)"
        )
    finally:
        if args.keep:
            print(f"kept: {url}")
        else:
            drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
