"""``reservations reconcile``: backfill the ledger from TaskRouter's Events resource.

After an outage of the events API (or a callback Twilio dropped), the Events resource still has
every event of the last 30 days. Reconciling reads them back through the twilio SDK and records
each reservation event as the callbacks would have: one transition per reservation and status,
so a run is idempotent with the callbacks and with every earlier run (what the ledger holds
already counts as ``duplicate``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from workers import metrics
from workers.core.taskrouter_events import Channel, ReservationEvent, from_resource
from workers.errors import InvalidEvent
from workers.events.recording import TransitionsWriter, transition_of

logger = logging.getLogger(__name__)


class EventsSource(Protocol):
    """Where events are read back from (``TaskRouterGateway.events``)."""

    def events(
        self, workspace_sid: str, start: datetime, end: datetime, reservation_sid: str | None = None
    ) -> Iterator[list[dict[str, Any]]]: ...


@dataclass
class Report:
    """What a run read and what became of it."""

    read: int = 0
    recorded: int = 0
    duplicate: int = 0
    ignored: int = 0
    invalid: int = 0

    def __str__(self) -> str:
        return (
            f"read {self.read} event(s): {self.recorded} new transition(s) recorded, {self.duplicate} already"
            f" in the ledger, {self.ignored} ignored (not a reservation's status), {self.invalid} unreadable"
        )


def reconcile(
    source: EventsSource,
    writer: TransitionsWriter,
    workspaces: Sequence[str],
    start: datetime,
    end: datetime | None = None,
    reservations: Sequence[str] = (),
) -> Report:
    """Record every reservation event of ``workspaces`` between ``start`` and ``end`` (now), of
    ``reservations`` only when given. One transaction per page of events."""
    end = end or datetime.now(UTC)
    report = Report()
    for workspace_sid in workspaces:
        chosen: Sequence[str | None] = reservations or [None]
        for reservation_sid in chosen:
            for page in source.events(workspace_sid, start, end, reservation_sid):
                _record(writer, page, report)
    return report


def _record(writer: TransitionsWriter, page: list[dict[str, Any]], report: Report) -> None:
    events: list[ReservationEvent] = []
    for fields in page:
        report.read += 1
        try:
            parsed = from_resource(**fields)
        except InvalidEvent as exc:
            report.invalid += 1
            metrics.event(Channel.RECONCILE, "invalid")
            logger.warning("event %s could not be read: %s", fields.get("sid"), exc)
            continue
        if isinstance(parsed, ReservationEvent):
            events.append(parsed)
        else:
            report.ignored += 1
            metrics.event(Channel.RECONCILE, "ignored")
    # Oldest first (the resource lists newest first), so that each transition follows the last.
    epoch = datetime.min.replace(tzinfo=UTC)
    events.sort(key=lambda event: event.occurred_at or epoch)
    if not events:
        return
    for result in writer.append_transitions([transition_of(event) for event in events]):
        if result.appended:
            report.recorded += 1
            metrics.event(Channel.RECONCILE, "recorded")
        else:
            report.duplicate += 1
            metrics.event(Channel.RECONCILE, "duplicate")
