"""A reservation's status over time, reconstructed from its ledger rows alone."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from workers.audit.queries import Filters, iterate
from workers.ledger.models import EventKind, LedgerRow
from workers.ledger.reader import LedgerReader


@dataclass(frozen=True, slots=True)
class Step:
    """One status the reservation entered. ``action_id`` is None for a change we only observed;
    ``source`` says how the ledger learnt it (our answer, TaskRouter's event, a fetch)."""

    position: int
    recorded_at: datetime
    from_status: str | None
    to_status: str
    source: str | None
    etag: str | None
    action_id: uuid.UUID | None
    action: str | None
    outcome: str | None


def steps(events: list[LedgerRow]) -> list[Step]:
    """The transitions among ``events`` (one reservation's rows, in ledger order). Pure.

    Each step carries the outcome its action ended with, if the rows say.
    """
    outcomes = {
        e.action_id: e.outcome for e in events if e.kind == EventKind.OUTCOME and e.action_id is not None
    }
    return [
        Step(
            position=e.position,
            recorded_at=e.recorded_at,
            from_status=e.from_status,
            to_status=e.to_status,
            source=e.source,
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
