"""The three forms of a TaskRouter event, read by the pure core (no services)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from workers.core.sids import new_sid
from workers.core.state_machine import Status
from workers.core.taskrouter_events import (
    EVENT_STATUS,
    Channel,
    Ignored,
    ReservationEvent,
    from_callback,
    from_cloud_event,
    from_resource,
)
from workers.errors import InvalidEvent
from workers.testing.emulator.events import RESERVATION_EVENT_TYPES, STATUS_EVENTS

WR, WS, WT, WK = new_sid("WR"), new_sid("WS"), new_sid("WT"), new_sid("WK")
EV = "EV" + "a" * 32


def form(event_type: str, **more: str) -> dict[str, str]:
    return {
        "EventType": event_type,
        "ResourceType": "Reservation",
        "ResourceSid": WR,
        "ReservationSid": WR,
        "WorkspaceSid": WS,
        "TaskSid": WT,
        "WorkerSid": WK,
        "Sid": EV,
        "Timestamp": "1767323045",
        "TimestampMs": "1767323045123",
        **more,
    }


def test_the_emulators_event_types_are_the_ones_we_read() -> None:
    assert {*EVENT_STATUS, "reservation.failed"} == set(RESERVATION_EVENT_TYPES)
    assert {status: event for event, status in EVENT_STATUS.items() if status is not Status.PENDING} == dict(
        STATUS_EVENTS
    )


@pytest.mark.parametrize("event_type", sorted(EVENT_STATUS))
def test_each_reservation_event_reports_its_status(event_type: str) -> None:
    parsed = from_callback(form(event_type))
    assert isinstance(parsed, ReservationEvent)
    assert (parsed.reservation_sid, parsed.to_status, parsed.key, parsed.channel) == (
        WR,
        EVENT_STATUS[event_type],
        EV,
        Channel.CALLBACK,
    )
    assert (parsed.workspace_sid, parsed.task_sid, parsed.worker_sid) == (WS, WT, WK)
    assert parsed.occurred_at == datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    assert parsed.detail == f"{event_type} {EV} at 2026-01-02T03:04:05.123+00:00 (callback)"


def test_without_a_sid_the_key_is_resource_type_and_time() -> None:
    parsed = from_callback({k: v for k, v in form("reservation.accepted").items() if k != "Sid"})
    assert isinstance(parsed, ReservationEvent)
    assert parsed.key == f"{WR}:reservation.accepted:1767323045123"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"EventType": "task.created", "ResourceType": "Task", "ResourceSid": WT}, Ignored.NOT_RESERVATION),
        ({"EventType": "worker.activity.update", "ResourceSid": WK}, Ignored.NOT_RESERVATION),
        (form("reservation.failed"), Ignored.NO_STATUS),
    ],
)
def test_other_events_are_ignored_with_a_reason(fields: dict[str, str], expected: Ignored) -> None:
    assert from_callback(fields) is expected


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "no EventType"),
        (form("reservation.exploded"), "unknown reservation event type"),
        (
            form("reservation.accepted", ReservationSid="WRnope", ResourceSid="WRnope"),
            "valid reservation SID",
        ),
    ],
)
def test_unreadable_events_are_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        from_callback(fields)


def cloud(event_type: str, **payload: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "type": f"com.twilio.taskrouter.{event_type}",
        "id": "NO" + "a" * 32,
        "time": "2026-01-02T03:04:05.123Z",
        "data": {
            "sid": EV,
            "payload": {"eventtype": event_type, "reservation_sid": WR, "workspace_sid": WS, **payload},
        },
    }


def test_a_cloud_event_reads_like_its_callback() -> None:
    parsed = from_cloud_event(cloud("reservation.wrapup", task_sid=WT, timestamp="2026-01-02T03:04:05.123Z"))
    assert isinstance(parsed, ReservationEvent)
    assert (parsed.to_status, parsed.key, parsed.task_sid, parsed.channel) == (
        Status.WRAPPING,
        EV,
        WT,
        Channel.STREAM,
    )
    assert parsed.occurred_at == datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    assert (
        from_cloud_event({**cloud("x"), "type": "com.twilio.messaging.message.sent"})
        is Ignored.NOT_RESERVATION
    )
    with pytest.raises(InvalidEvent):
        from_cloud_event(["not", "an", "object"])


def test_an_item_of_the_events_resource() -> None:
    parsed = from_resource(
        sid=EV,
        event_type="reservation.timeout",
        resource_type="Reservation",
        resource_sid=WR,
        workspace_sid=WS,
        event_date_ms=1767323045123,
        event_data={"reservation_sid": WR, "task_sid": WT, "worker_sid": WK},
    )
    assert isinstance(parsed, ReservationEvent)
    assert (parsed.to_status, parsed.channel, parsed.worker_sid) == (Status.TIMEOUT, Channel.RECONCILE, WK)
