"""The audit queries both the CLI and the API answer: filtered history pages, an action's story.

Everything here reads (the ledger's reader role is enough). Paging is by the ledger's own
:class:`~workers.ledger.models.Cursor`, so a page boundary is stable while rows keep arriving.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from workers.ledger.models import ActionRecord, Cursor, EventKind, LedgerRow
from workers.ledger.reader import LedgerReader

# What a redrive row's detail says, on the original action: "redriven as <new action_id>".
REDRIVEN_AS = "redriven as {action_id}"
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class Filters:
    """History filters; every one given must match (None means any)."""

    reservation_sid: str | None = None
    task_sid: str | None = None
    worker_sid: str | None = None
    workspace_sid: str | None = None
    action_id: uuid.UUID | None = None
    correlation_id: str | None = None
    kind: str | None = None
    outcome: str | None = None
    twilio_error_code: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    # A known PII value (a phone number, say): rows whose parameters held it, via its keyed hash.
    pii_value: str | None = None

    def as_history_kwargs(self) -> dict[str, Any]:
        return {
            "reservation_sid": self.reservation_sid,
            "task_sid": self.task_sid,
            "worker_sid": self.worker_sid,
            "workspace_sid": self.workspace_sid,
            "action_id": self.action_id,
            "correlation_id": self.correlation_id,
            "kind": self.kind,
            "outcome": self.outcome,
            "twilio_error_code": self.twilio_error_code,
            "since": self.since,
            "until": self.until,
            "pii_value": self.pii_value,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of history. ``next_cursor`` is where to resume (``after`` when the page is empty),
    ``has_more`` whether the page was full (more rows may already be waiting). ``archived``: the
    archived months the query's time range reaches, whose rows the ledger no longer holds."""

    events: list[LedgerRow]
    next_cursor: Cursor | None
    has_more: bool
    archived: list[date] = field(default_factory=list)


def archived_reached(months: list[date], since: datetime | None, until: datetime | None) -> list[date]:
    """The months of ``months`` that [since, until) overlaps (no bound: the whole ledger)."""
    reached = []
    for month in months:
        start = datetime(month.year, month.month, 1, tzinfo=UTC)
        end = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        if (since is None or since < end) and (until is None or until > start):
            reached.append(month)
    return reached


def archived_notice(months: list[date]) -> str | None:
    """What to tell someone whose query reaches into archived months, or None."""
    if not months:
        return None
    named = ", ".join(f"{m:%Y-%m}" for m in months)
    return (
        f"this query reaches into archived months ({named}): their rows are no longer in the ledger"
        " and are not shown; read them from the archive (`reservations ledger archive`, ops/LEDGER.md)"
    )


def page(ledger: LedgerReader, filters: Filters, *, after: Cursor | None = None, limit: int = 100) -> Page:
    """One page of history after ``after``, at most ``limit`` rows (1..MAX_PAGE)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    events = ledger.history(after=after, limit=limit, **filters.as_history_kwargs())
    next_cursor = events[-1].cursor if events else after
    archived = archived_reached(ledger.detached_months(), filters.since, filters.until)
    return Page(events, next_cursor, has_more=len(events) == limit, archived=archived)


def iterate(
    ledger: LedgerReader, filters: Filters, *, after: Cursor | None = None, batch: int = MAX_PAGE
) -> Iterator[LedgerRow]:
    """Every matching row after ``after``, in ledger order, fetched a page at a time."""
    while True:
        current = page(ledger, filters, after=after, limit=batch)
        yield from current.events
        if not current.has_more:
            return
        after = current.next_cursor


@dataclass(frozen=True, slots=True)
class Story:
    """One action's whole story: its registry entry, its rows, and its redrive links."""

    record: ActionRecord
    events: list[LedgerRow]
    redriven_as: list[uuid.UUID] = field(default_factory=list)
    redrive_of: uuid.UUID | None = None


def story(ledger: LedgerReader, action_id: uuid.UUID) -> Story | None:
    """What happened to ``action_id``, or None if the ledger never received it."""
    record = ledger.action(action_id)
    if record is None:
        return None
    events = list(iterate(ledger, Filters(action_id=action_id)))
    redriven_as = [
        uuid.UUID(found.group(0))
        for event in events
        if event.kind == EventKind.REDRIVE and event.detail and (found := _UUID.search(event.detail))
    ]
    redrive_of = None
    if record.reservation_sid is not None:
        wanted = REDRIVEN_AS.format(action_id=action_id)
        for event in iterate(ledger, Filters(reservation_sid=record.reservation_sid, kind=EventKind.REDRIVE)):
            if event.detail == wanted and event.action_id is not None:
                redrive_of = event.action_id
                break
    return Story(record, events, redriven_as, redrive_of)
