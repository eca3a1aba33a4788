"""The projection of each reservation's status and ETag, and its rebuild from the ledger alone.

Replay is a fold: each reservation's transitions in chain order, the last one wins unless it
ranks below the status already reached (a transition learnt late never moves it backwards). The
projection table is kept by ``ledger.record_transition`` in the same transaction as the row it
follows; :func:`rebuild` recomputes it from the ledger and :func:`differences` compares the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from psycopg.rows import class_row

from workers.core.state_machine import status_rank
from workers.ledger.connector import Connection, translated
from workers.ledger.models import EventKind, LedgerRow, ReservationState
from workers.ledger.queries import QUERIES


def fold(events: Iterable[LedgerRow]) -> dict[str, ReservationState]:
    """The projection that ``events`` (in chain order per reservation) lead to. Pure."""
    states: dict[str, ReservationState] = {}
    for event in events:
        if event.kind != EventKind.TRANSITION or event.reservation_sid is None or event.to_status is None:
            continue
        reached = states.get(event.reservation_sid)
        if reached is not None and status_rank(event.to_status) < status_rank(reached.status):
            continue
        states[event.reservation_sid] = ReservationState(
            reservation_sid=event.reservation_sid,
            workspace_sid=event.workspace_sid,
            task_sid=event.task_sid,
            worker_sid=event.worker_sid,
            status=event.to_status,
            etag=event.etag_after,
            last_position=event.position,
            updated_at=event.recorded_at,
        )
    return states


def rebuild(conn: Connection) -> dict[str, ReservationState]:
    """The projection computed from the ledger's transitions alone (streamed, server-side)."""
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        with conn.cursor("rebuild_projection", row_factory=class_row(LedgerRow)) as cur:
            cur.itersize = 10_000
            cur.execute(QUERIES["transitions_in_chain_order"])
            return fold(cur)


def current(conn: Connection) -> dict[str, ReservationState]:
    """The projection table as it stands."""
    with translated(), conn.cursor(row_factory=class_row(ReservationState)) as cur:
        cur.execute(QUERIES["all_reservations"])
        return {state.reservation_sid: state for state in cur}


def differences(stored: Mapping[str, ReservationState], rebuilt: Mapping[str, ReservationState]) -> list[str]:
    """Human-readable differences between the projection table and a rebuild."""
    found = []
    for sid in sorted(stored.keys() | rebuilt.keys()):
        have, want = stored.get(sid), rebuilt.get(sid)
        if have != want:
            found.append(f"{sid}: projection has {have}, the ledger says {want}")
    return found


def replace(conn: Connection, states: Mapping[str, ReservationState]) -> None:
    """Overwrite the projection table with ``states`` in one transaction (owner role)."""
    with translated(), conn.transaction():
        conn.execute(QUERIES["clear_projection"])
        with conn.cursor() as cur:
            cur.executemany(
                QUERIES["insert_projection"],
                [
                    {
                        "reservation_sid": s.reservation_sid,
                        "workspace_sid": s.workspace_sid,
                        "task_sid": s.task_sid,
                        "worker_sid": s.worker_sid,
                        "status": s.status,
                        "etag": s.etag,
                        "last_position": s.last_position,
                        "updated_at": s.updated_at,
                    }
                    for s in states.values()
                ],
            )
