"""A ledger at scale, loaded in minutes: for ops/bench_ledger_scale.py and the archive's tests.

Every row is generated in the database by a temporary function that hashes each chain with the
ledger's own ``ledger.event_hash`` (so every chain verifies, in the canonical form the migrations
define), and is inserted with the guards off (``session_replication_role = replica``, as a
superuser: the chain trigger would hash each row again, and take an hour for ten million rows
on two cores), with the chain heads the trigger would have kept. Reservations of two actions
(accept, then complete), each of three rows in the shape the ledger writes since migration 0013:
received, intent, and the transition that settles it (its outcome ``applied`` on the transition
row, no outcome row), an action's facts on its received row only and a row's reservation SID as
its chain key only (0012). The complete of every hundredth reservation fails instead: received,
intent, and an ``outcome`` row (``failed``, HTTP 400, no transition), the reservation left
accepted. The registry and the projection say what the rows say (outcomes, times, each
reservation's last transition). ``IN_FLIGHT`` reservations interleaved in ledger order, spread
evenly over a time span. The rows from ``Shape.tail_from`` on get the loading transaction's own
xid, as if written after a checkpoint sealed the rest.
"""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources

from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.queries import parse

ROWS_PER_ACTION = 3  # received, intent, the transition (or failed outcome) that settles it
ACTIONS_PER_RESERVATION = 2  # accept, then complete
ROWS_PER_RESERVATION = ROWS_PER_ACTION * ACTIONS_PER_RESERVATION
IN_FLIGHT = 1000
BATCH = 2500  # reservations per statement

SQL = parse(resources.files("workers.testing").joinpath("scale.sql").read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Shape:
    """Where each row goes: ``reservations`` chains, positions up to ``top``, times from ``t0``."""

    reservations: int
    top: int
    tail_from: int
    t0: datetime
    step_us: float
    xid_per_position: float
    in_flight: int

    def params(self) -> dict[str, object]:
        return {
            "t0": self.t0,
            "step_us": self.step_us,
            "xid_per_position": self.xid_per_position,
            "tail_from": self.tail_from,
            "in_flight": self.in_flight,
            "rows_per_action": ROWS_PER_ACTION,
        }


def position(shape_in_flight: int, r: int, s: int) -> int:
    """The position of row ``s`` (1 .. ROWS_PER_RESERVATION) of reservation ``r``, as the generator
    sets it (``pg_temp.bench_position`` in scale.sql: the same formula)."""
    window = shape_in_flight
    return (r // window) * window * ROWS_PER_RESERVATION + (s - 1) * window + r % window + 1


def action_id(n: int) -> uuid.UUID:
    """The ``n``-th action's id, as the generator sets it (md5 of n: a fixed, well-spread id)."""
    return uuid.UUID(hex=hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest())


def plan(url: str, rows: int, tail: int, t0: datetime, end: datetime, in_flight: int = IN_FLIGHT) -> Shape:
    """A ledger of about ``rows`` rows from ``t0`` to ``end``, its last ``tail`` positions written
    after the rest (and below the current xid: the rest must be older than any checkpoint)."""
    reservations = max(1, rows // ROWS_PER_RESERVATION)
    window = min(in_flight, reservations)
    top = max(
        position(window, r, ROWS_PER_RESERVATION) for r in {reservations - 1, max(0, reservations - window)}
    )
    with connect(url, None) as conn:
        found = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    xid_now = int(found[0]) if found else 10
    return Shape(
        reservations,
        top,
        top - tail + 1,
        t0,
        (end - t0).total_seconds() * 1e6 / top,
        max(0, xid_now - 10) / top,
        window,
    )


def make_partitions(url: str, shape: Shape) -> None:
    """The monthly partitions the rows need, where the ledger is partitioned (migration 0004):
    made by the owner, as ``reservations migrate`` makes them, for the past months too."""
    end = shape.t0 + timedelta(microseconds=shape.step_us * shape.top)
    with connect(url, Role.OWNER) as conn:
        found = conn.execute(
            "SELECT to_regprocedure('ledger.create_events_partitions(integer, integer, timestamptz)')"
            " IS NOT NULL"
        ).fetchone()
        if found and found[0]:
            months = (end.year - shape.t0.year) * 12 + end.month - shape.t0.month + 1
            conn.execute("SELECT ledger.create_events_partitions(%s, 1, %s)", [months, shape.t0])


def month_of(shape: Shape, reservation: int) -> tuple[int, int]:
    """The (year, month) of reservation ``reservation``'s first row, as the generator times it."""
    at = shape.t0 + timedelta(microseconds=shape.step_us * position(shape.in_flight, reservation, 1))
    return at.year, at.month


def load(url: str, shape: Shape, lo: int, hi: int, jobs: int = 2) -> None:
    """The rows at positions in (lo, hi] (the registry and projection too when ``lo`` is 0),
    ``jobs`` connections in parallel; ``url`` must be a superuser's."""
    if lo == 0:
        make_partitions(url, shape)
    first_res = lo // (shape.in_flight * ROWS_PER_RESERVATION) * shape.in_flight
    batches = [
        (b, min(b + BATCH, shape.reservations) - 1) for b in range(first_res, shape.reservations, BATCH)
    ]
    months = sorted({month_of(shape, first) for first, _ in batches})

    def run(job: int) -> None:
        # Each month (a partition) is written by one job, batch after batch: its heap is in time
        # order, as the workers append it, and the BRIN on recorded_at finds an hour in one or two
        # block ranges. Jobs taking turns with batches wrote two places in time into the same
        # pages, and drifted apart: one second of a 10 M-row load spanned 12 to 41 block ranges.
        mine = set(months[job::jobs])
        with connect(url, None) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute(SQL["position"])
            conn.execute(SQL["generator"])
            for first, last in (b for b in batches if month_of(shape, b[0]) in mine):
                params = {**shape.params(), "first": first, "last": last, "lo": lo, "hi": hi}
                with conn.transaction():
                    conn.execute(SQL["load_batch"], params)
                    if lo == 0:
                        conn.execute(SQL["load_actions"], params)
                        conn.execute(SQL["load_projection"], params)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, range(jobs)))
