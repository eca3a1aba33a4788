"""TaskRouter's events as the ledger records them: which status each reservation event reports,
and one typed :class:`ReservationEvent` from each of the three forms TaskRouter reports it in (an
Event Callback's form, an Event Streams CloudEvent, an item of the Events resource). Pure.

A reservation enters each status at most once, so an event is identified, for the ledger, by
``(reservation_sid, to_status)``: the same event delivered twice, or reported by a callback and
by reconciliation, or our own update's echo, is one transition (``ledger.record_transition``).
``key`` (the event's ``Sid``, else the CloudEvent ``id``, else ``ResourceSid:EventType:TimestampMs``)
goes into the row's ``detail`` so that an auditor can find the event at Twilio.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from workers.core.sids import is_sid
from workers.core.state_machine import Status
from workers.errors import InvalidEvent

# The status each reservation event reports (TaskRouter's Events reference).
EVENT_STATUS: Mapping[str, Status] = {
    "reservation.created": Status.PENDING,
    "reservation.accepted": Status.ACCEPTED,
    "reservation.rejected": Status.REJECTED,
    "reservation.timeout": Status.TIMEOUT,
    "reservation.canceled": Status.CANCELED,
    "reservation.rescinded": Status.RESCINDED,
    "reservation.wrapup": Status.WRAPPING,
    "reservation.completed": Status.COMPLETED,
}
# A reservation event that reports no status (an instruction failed; the reservation's status
# is not one of TaskRouter's): acknowledged, counted, not a transition.
STATUSLESS_EVENTS = frozenset({"reservation.failed"})
CLOUD_EVENT_PREFIX = "com.twilio.taskrouter."


class Channel(enum.StrEnum):
    """How the event reached us."""

    CALLBACK = "callback"  # a Workspace's Event Callback
    STREAM = "stream"  # an Event Streams webhook sink
    RECONCILE = "reconcile"  # read back from the Events resource by `reservations reconcile`


class Ignored(enum.StrEnum):
    """Why an event is acknowledged but not recorded (the ``reason`` label of its counter)."""

    NOT_RESERVATION = "not_reservation"
    NO_STATUS = "no_status"


@dataclass(frozen=True, slots=True)
class ReservationEvent:
    """A reservation event that reports a status: a transition with ``source = event``."""

    key: str
    event_type: str
    reservation_sid: str
    workspace_sid: str | None
    task_sid: str | None
    worker_sid: str | None
    occurred_at: datetime | None
    channel: Channel

    @property
    def to_status(self) -> Status:
        return EVENT_STATUS[self.event_type]

    @property
    def detail(self) -> str:
        """What the ledger row says of the event: its type, its key at Twilio, when it happened
        at TaskRouter and how it reached us."""
        when = self.occurred_at.isoformat(timespec="milliseconds") if self.occurred_at else "unknown time"
        return f"{self.event_type} {self.key} at {when} ({self.channel})"


Parsed = ReservationEvent | Ignored


def from_callback(form: Mapping[str, str]) -> Parsed:
    """An Event Callback's form parameters (``EventType``, ``ResourceType``, ``ResourceSid``, ...)."""
    event_type = _text(form.get("EventType"), "EventType")
    millis = _millis(form.get("TimestampMs"))
    if millis is None and form.get("Timestamp"):
        seconds = _millis(form.get("Timestamp"))
        millis = seconds * 1000 if seconds is not None else None
    reservation = form.get("ReservationSid") or (
        form.get("ResourceSid") if (form.get("ResourceType") or "").lower() == "reservation" else None
    )
    key = form.get("Sid") or f"{form.get('ResourceSid')}:{event_type}:{form.get('TimestampMs')}"
    return _parsed(
        event_type,
        reservation,
        key=key,
        workspace_sid=form.get("WorkspaceSid"),
        task_sid=form.get("TaskSid"),
        worker_sid=form.get("WorkerSid"),
        occurred_at=_time_of_millis(millis),
        channel=Channel.CALLBACK,
    )


def from_cloud_event(event: Any) -> Parsed:
    """One CloudEvent of an Event Streams delivery (``type`` ``com.twilio.taskrouter.<event>``,
    the event under ``data.payload``)."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("an Event Streams delivery is a JSON array of CloudEvent objects")
    kind = _text(event.get("type"), "type")
    if not kind.startswith(CLOUD_EVENT_PREFIX):
        return Ignored.NOT_RESERVATION
    data = event.get("data")
    data = data if isinstance(data, Mapping) else {}
    payload = data.get("payload")
    payload = payload if isinstance(payload, Mapping) else data
    event_type = str(payload.get("eventtype") or kind.removeprefix(CLOUD_EVENT_PREFIX))
    occurred = _iso_time(payload.get("timestamp") or data.get("timestamp") or event.get("time"))
    key = data.get("sid") or payload.get("sid") or event.get("id")
    return _parsed(
        event_type,
        payload.get("reservation_sid") or payload.get("resource_sid"),
        key=str(key or f"{payload.get('resource_sid')}:{event_type}:{occurred}"),
        workspace_sid=payload.get("workspace_sid"),
        task_sid=payload.get("task_sid"),
        worker_sid=payload.get("worker_sid"),
        occurred_at=occurred,
        channel=Channel.STREAM,
    )


def from_resource(
    *,
    sid: str | None,
    event_type: str | None,
    resource_type: str | None,
    resource_sid: str | None,
    workspace_sid: str | None,
    event_date_ms: int | None,
    event_data: Mapping[str, Any] | None,
) -> Parsed:
    """An item of TaskRouter's Events resource (``GET /v1/Workspaces/{ws}/Events``)."""
    data = event_data or {}
    reservation = data.get("reservation_sid") or (
        resource_sid if (resource_type or "").lower() == "reservation" else None
    )
    kind = _text(event_type, "event_type")
    return _parsed(
        kind,
        reservation,
        key=sid or f"{resource_sid}:{kind}:{event_date_ms}",
        workspace_sid=workspace_sid or data.get("workspace_sid"),
        task_sid=data.get("task_sid"),
        worker_sid=data.get("worker_sid"),
        occurred_at=_time_of_millis(event_date_ms),
        channel=Channel.RECONCILE,
    )


def _parsed(
    event_type: str,
    reservation_sid: object,
    *,
    key: str,
    workspace_sid: object,
    task_sid: object,
    worker_sid: object,
    occurred_at: datetime | None,
    channel: Channel,
) -> Parsed:
    if not event_type.startswith("reservation."):
        return Ignored.NOT_RESERVATION
    if event_type in STATUSLESS_EVENTS:
        return Ignored.NO_STATUS
    if event_type not in EVENT_STATUS:
        raise InvalidEvent(f"unknown reservation event type {event_type[:80]!r}")
    if not isinstance(reservation_sid, str) or not is_sid(reservation_sid, "WR"):
        raise InvalidEvent(f"{event_type} without a valid reservation SID (WR and 32 hex digits)")
    return ReservationEvent(
        key=key[:120],
        event_type=event_type,
        reservation_sid=reservation_sid,
        workspace_sid=_sid(workspace_sid, "WS"),
        task_sid=_sid(task_sid, "WT"),
        worker_sid=_sid(worker_sid, "WK"),
        occurred_at=occurred_at,
        channel=channel,
    )


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"the event has no {name}")
    return value


def _sid(value: object, prefix: str) -> str | None:
    return value if isinstance(value, str) and is_sid(value, prefix) else None


def _millis(value: object) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _time_of_millis(millis: int | None) -> datetime | None:
    if millis is None:
        return None
    try:
        return datetime.fromtimestamp(millis / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
