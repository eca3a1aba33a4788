"""The events' pure parts: signatures, wire forms, the bounded log (no server)."""

from __future__ import annotations

import json

import pytest
from twilio.request_validator import RequestValidator

from workers.core.state_machine import Status
from workers.testing.emulator.events import (
    Event,
    EventLog,
    callback_form,
    cloud_event,
    event_type_of,
    json_body,
    sign_form,
    sign_json,
    strip_fragment,
)
from workers.testing.emulator.model import Reservation, Transition
from workers.testing.emulator.settings import parse_events_filter

TOKEN = "unit-auth-token"
RESERVATION = Reservation(
    "WR" + "1" * 32, "WS" + "2" * 32, "WT" + "3" * 32, "WK" + "4" * 32, "Doug", Status.ACCEPTED, 2, "", ""
)


def event(log: EventLog | None = None, event_type: str = "reservation.accepted") -> Event:
    return (log or EventLog(10, "AC" + "0" * 32)).record(
        event_type, None, RESERVATION, "api", 1_700_000_000.123
    )


@pytest.mark.parametrize(
    ("signed", "requested"),
    [
        ("https://events.example.com/taskrouter/events", "https://events.example.com:443/taskrouter/events"),
        ("https://events.example.com:443/taskrouter/events", "https://events.example.com/taskrouter/events"),
        (
            "http://127.0.0.1:8000/taskrouter/events?tenant=a",
            "http://127.0.0.1:8000/taskrouter/events?tenant=a",
        ),
    ],
)
def test_form_signature_verifies_with_and_without_the_default_port(signed: str, requested: str) -> None:
    form = callback_form(event())
    signature = sign_form(signed, form, TOKEN)
    assert RequestValidator(TOKEN).validate(requested, form, signature)
    assert not RequestValidator("wrong").validate(requested, form, signature)


def test_json_signature_carries_the_body_hash_in_the_url() -> None:
    body = json_body([event()])
    for url, joiner in (("https://sink.example.com/streams", "?"), ("https://sink.example.com/s?x=1", "&")):
        signed, signature = sign_json(url, body, TOKEN)
        assert signed.startswith(url + joiner + "bodySHA256=")
        assert RequestValidator(TOKEN).validate(signed, body.decode(), signature)
        assert not RequestValidator(TOKEN).validate(signed, body.decode() + " ", signature)


def test_wire_forms() -> None:
    accepted = event()
    form = callback_form(accepted)
    assert form["TimestampMs"] == "1700000000123"
    assert form["Timestamp"] == "1700000000"
    assert form["Sid"] == accepted.sid
    cloud = cloud_event(accepted)
    assert cloud["type"] == "com.twilio.taskrouter.reservation.accepted"
    assert cloud["time"] == "2023-11-14T22:13:20.123Z"
    assert json.loads(json_body([accepted]))[0]["id"] == cloud["id"]
    assert strip_fragment("https://a.example/e?x=1#rc=3") == "https://a.example/e?x=1"


def test_a_bare_version_bump_raises_no_event() -> None:
    def transition(before: Status, after: Status) -> Transition:
        return Transition(1, "WR", "WT", "WK", "WS", before, after, 1, 2, "admin", None, "touch", 0.0)

    assert event_type_of(transition(Status.PENDING, Status.PENDING)) is None
    assert event_type_of(transition(Status.PENDING, Status.TIMEOUT)) == "reservation.timeout"
    assert event_type_of(transition(Status.ACCEPTED, Status.WRAPPING)) == "reservation.wrapup"


def test_the_log_is_bounded_and_forgets_the_oldest() -> None:
    log = EventLog(2, "AC" + "0" * 32)
    first, second, third = (event(log) for _ in range(3))
    assert [entry.sid for entry in log.entries()] == [second.sid, third.sid]
    assert log.get(first.sid) is None
    assert log.get(third.sid) is third


def test_events_filter() -> None:
    assert parse_events_filter(None) is None
    assert parse_events_filter(" , ") is None
    assert parse_events_filter("reservation.accepted, reservation.timeout") == (
        "reservation.accepted",
        "reservation.timeout",
    )
