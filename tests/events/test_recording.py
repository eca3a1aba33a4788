"""What the events API records: each reservation event type as its transition (source=event),
other events acknowledged and counted, and a duplicated, delayed and reordered stream as exactly
one row per transition, the projection never moved backwards."""

from __future__ import annotations

import random

import pytest
from prometheus_client import REGISTRY

from tests.audit.support import TestClient
from tests.events.conftest import PUBLIC, TOKEN, transitions
from tests.ledger.conftest import accept_applied, make_action
from workers.core.sids import new_sid
from workers.core.taskrouter_events import EVENT_STATUS
from workers.events.api import CALLBACK_PATH
from workers.ledger import projection
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.emulator.events import sign_form

pytestmark = pytest.mark.integration

URL = f"{PUBLIC}{CALLBACK_PATH}"
_sequence = iter(range(1, 10**9))


def event(reservation_sid: str, event_type: str, at_ms: int = 1767323045000, **more: str) -> dict[str, str]:
    return {
        "EventType": event_type,
        "ResourceType": "Reservation" if event_type.startswith("reservation.") else "Task",
        "ResourceSid": reservation_sid,
        "ReservationSid": reservation_sid,
        "Sid": f"EV{next(_sequence):032x}",
        "TimestampMs": str(at_ms),
        **more,
    }


def deliver(api: TestClient, form: dict[str, str]) -> None:
    response = api.post(CALLBACK_PATH, data=form, headers={"X-Twilio-Signature": sign_form(URL, form, TOKEN)})
    assert response.status_code == 204, response.text
    assert response.headers["content-type"] == "application/json"


def counted(result: str) -> float:
    return (
        REGISTRY.get_sample_value("reservations_events_total", {"channel": "callback", "result": result})
        or 0.0
    )


@pytest.mark.parametrize("event_type", sorted(EVENT_STATUS))
def test_each_reservation_event_is_its_transition(
    api: TestClient, reader: LedgerReader, event_type: str
) -> None:
    sid, ws, wk = new_sid("WR"), new_sid("WS"), new_sid("WK")
    deliver(api, event(sid, event_type, WorkspaceSid=ws, WorkerSid=wk))
    rows = transitions(reader, sid)
    assert [(r.to_status, r.source, r.workspace_sid, r.worker_sid) for r in rows] == [
        (EVENT_STATUS[event_type].value, "event", ws, wk)
    ]
    assert rows[0].detail is not None
    assert rows[0].detail.startswith(f"{event_type} EV")
    state = reader.reservation(sid)
    assert state is not None
    assert (state.status, state.etag) == (EVENT_STATUS[event_type].value, None)


@pytest.mark.parametrize(
    ("event_type", "reason"),
    [
        ("task.created", "not a reservation's"),
        ("worker.activity.update", "ditto"),
        ("reservation.failed", "no status"),
    ],
)
def test_other_events_are_acknowledged_counted_and_not_recorded(
    api: TestClient, reader: LedgerReader, event_type: str, reason: str
) -> None:
    sid = new_sid("WR")
    before = counted("ignored")
    deliver(api, event(sid, event_type))
    assert reader.history(reservation_sid=sid) == []
    assert counted("ignored") == before + 1


def test_an_unreadable_reservation_event_gets_400(api: TestClient) -> None:
    form = event(new_sid("WR"), "reservation.accepted", ReservationSid="WRbroken", ResourceSid="WRbroken")
    response = api.post(CALLBACK_PATH, data=form, headers={"X-Twilio-Signature": sign_form(URL, form, TOKEN)})
    assert response.status_code == 400
    assert "reservation SID" in response.json()["message"]


def test_a_duplicated_delayed_and_reordered_stream_gives_one_row_per_transition(
    api: TestClient, reader: LedgerReader, db_url: str
) -> None:
    lives = {
        new_sid("WR"): [
            "reservation.created",
            "reservation.accepted",
            "reservation.wrapup",
            "reservation.completed",
        ],
        new_sid("WR"): ["reservation.created", "reservation.timeout"],
        new_sid("WR"): ["reservation.created", "reservation.rejected"],
        new_sid("WR"): ["reservation.created", "reservation.accepted", "reservation.completed"],
    }
    stream = []
    for sid, types in lives.items():
        for n, event_type in enumerate(types):
            stream.append(event(sid, event_type, at_ms=1767323045000 + 1000 * n))
    deliveries = stream * 3  # every event three times (Twilio's retries, duplicate faults)
    random.Random(14).shuffle(deliveries)  # delayed and reordered
    before = (counted("recorded"), counted("duplicate"))
    for form in deliveries:
        deliver(api, form)
    assert (counted("recorded") - before[0], counted("duplicate") - before[1]) == (
        len(stream),
        2 * len(stream),
    )
    for sid, types in lives.items():
        rows = transitions(reader, sid)
        assert sorted(r.to_status or "" for r in rows) == sorted(EVENT_STATUS[t].value for t in types)
        assert {r.source for r in rows} == {"event"}
        state = reader.reservation(sid)
        assert state is not None
        assert state.status == EVENT_STATUS[types[-1]].value  # never moved backwards
    with connect(db_url, Role.READER) as conn:
        rebuilt = projection.rebuild(conn)
    assert all(rebuilt[sid] == reader.reservation(sid) for sid in lives)


def test_our_accept_and_its_callback_are_one_row_whichever_comes_first(
    api: TestClient, reader: LedgerReader, writer: PostgresLedgerWriter
) -> None:
    ours = accept_applied(writer)  # the answer first
    deliver(api, event(ours.reservation_sid, "reservation.accepted"))
    assert [(r.source, r.action_id) for r in transitions(reader, ours.reservation_sid)] == [
        ("action", ours.action_id)
    ]
    heard = make_action()  # the event first
    writer.receive(heard)
    deliver(api, event(heard.reservation_sid, "reservation.accepted"))
    accept_applied(writer, heard)
    assert [r.source for r in transitions(reader, heard.reservation_sid)] == ["event"]
    record = reader.action(heard.action_id)
    assert record is not None
    assert record.outcome == "applied"
