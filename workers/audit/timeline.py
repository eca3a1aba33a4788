"""A reservation's status over time, reconstructed from its ledger rows alone."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from workers.audit.queries import Filters, iterate
from workers.ledger.models import EventKind, LedgerRow, Source
from workers.ledger.reader import LedgerReader


def source_of(row: LedgerRow) -> str:
    """Where the ledger learnt of the transition ``row``: the one place that decides it.

    The ledger records it (``source``, migration 0003); rows written before have none, and then a
    transition that carries our action_id was our update's answer, and any other was noticed on a
    fetch (there were no event callbacks then).
    """
    return row.source or (Source.ACTION if row.action_id is not None else Source.FETCH)


@dataclass(frozen=True, slots=True)
class Step:
    """One status the reservation entered. ``action_id`` is None for a change we only observed;
    ``source`` says how the ledger learnt it (our answer, TaskRouter's event, a fetch)."""

    position: int
    recorded_at: datetime
    from_status: str | None
    to_status: str
    source: str
    etag: str | None
    action_id: uuid.UUID | None
    action: str | None
    outcome: str | None


def steps(events: list[LedgerRow]) -> list[Step]:
    """The transitions among ``events`` (one reservation's rows, in ledger order). Pure.

    Each step carries the outcome its action ended with, if the rows say: its first settling row's
    (the first outcome wins; a later refusal of a malformed message that reused the action's id
    is a row with an outcome too, but it settles nothing).
    """
    outcomes: dict[uuid.UUID, str | None] = {}
    for e in events:
        if e.settles and e.action_id is not None:
            outcomes.setdefault(e.action_id, e.outcome)
    return [
        Step(
            position=e.position,
            recorded_at=e.recorded_at,
            from_status=e.from_status,
            to_status=e.to_status,
            source=source_of(e),
            etag=e.etag_after,
            action_id=e.action_id,
            action=e.action,
            outcome=outcomes.get(e.action_id) if e.action_id is not None else None,
        )
        for e in events
        if e.kind == EventKind.TRANSITION and e.to_status is not None
    ]


def timeline(ledger: LedgerReader, reservation_sid: str) -> list[Step]:
    """Every status ``reservation_sid`` went through, oldest first, from the ledger alone."""
    return steps(list(iterate(ledger, Filters(reservation_sid=reservation_sid))))


@dataclass(frozen=True, slots=True)
class ActionSummary:
    """One action that targeted a reservation, from its rows: ``attempts`` updates sent (its
    write-ahead intents; rows from before intents: its attempt, conflict and answered transition
    rows), ``conflicts`` 412s, ``runs`` the highest run number (2 and more: retried later), the outcome
    and its reason."""

    action_id: uuid.UUID
    action: str | None
    received_at: datetime
    attempts: int
    conflicts: int
    runs: int
    outcome: str | None
    detail: str | None


def action_summaries(events: list[LedgerRow]) -> list[ActionSummary]:
    """The actions among one reservation's rows (in ledger order), in the order they arrived. Pure."""
    grouped: dict[uuid.UUID, list[LedgerRow]] = {}
    for event in events:
        if event.action_id is not None:
            grouped.setdefault(event.action_id, []).append(event)
    summaries = []
    for action_id, rows in grouped.items():
        settled = next((r for r in rows if r.settles), None)
        summaries.append(
            ActionSummary(
                action_id=action_id,
                action=next((r.action for r in rows if r.action), None),
                received_at=rows[0].recorded_at,
                attempts=_updates_sent(rows),
                conflicts=sum(r.kind == EventKind.CONFLICT for r in rows),
                runs=max((r.attempt or 0 for r in rows), default=0),
                outcome=settled.outcome if settled else None,
                detail=settled.detail if settled else None,
            )
        )
    return summaries


def _updates_sent(rows: list[LedgerRow]) -> int:
    intents = sum(r.kind == EventKind.INTENT for r in rows)
    if intents:
        return intents
    answered = (EventKind.ATTEMPT, EventKind.CONFLICT, EventKind.TRANSITION)
    return sum(r.kind in answered and r.http_status is not None for r in rows)
