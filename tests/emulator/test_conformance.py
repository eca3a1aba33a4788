"""The emulator behaves like TaskRouter's Reservation API, seen through the real twilio SDK."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException

from tests.emulator.conftest import API_KEY, API_SECRET, close, header, reservation_context, reservation_list
from tests.emulator.conftest import twilio_client as make_client
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID

TWILIO_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
REQUEST_ID = re.compile(r"^RQ[0-9a-f]{32}$")
ACTIVITY = "WA" + "b" * 32
CALL_SID = "CA" + "c" * 32


def test_fetch_returns_the_seeds_representation(
    client: Any, seeded: ReservationInfo, scope: str, emulator: EmulatorServer
) -> None:
    response = reservation_context(client, seeded, scope).fetch_with_http_info()
    assert response.status_code == 200
    assert header(response.headers, "ETag") == "1"
    assert REQUEST_ID.match(header(response.headers, "Twilio-Request-Id") or "")
    reservation = response.data
    assert reservation.sid == seeded.sid
    assert reservation.account_sid == EMULATOR_ACCOUNT_SID
    assert reservation.workspace_sid == seeded.workspace_sid
    assert reservation.task_sid == seeded.task_sid
    assert reservation.worker_sid == seeded.worker_sid
    assert reservation.worker_name == "Doug"
    assert reservation.reservation_status == "pending"
    workspace_url = f"{emulator.base_url}/v1/Workspaces/{seeded.workspace_sid}"
    assert reservation.links == {
        "task": f"{workspace_url}/Tasks/{seeded.task_sid}",
        "worker": f"{workspace_url}/Workers/{seeded.worker_sid}",
        "workspace": workspace_url,
    }
    path = seeded.task_path if scope == "task" else seeded.worker_path
    assert reservation.url == emulator.base_url + path
    assert reservation.date_created is not None


def test_raw_json_has_exactly_the_seeds_fields(client: Any, seeded: ReservationInfo, scope: str) -> None:
    path = seeded.task_path if scope == "task" else seeded.worker_path
    response = client.request("GET", client.taskrouter.base_url + path)
    body = json.loads(response.text)
    expected = {
        "account_sid",
        "date_created",
        "date_updated",
        "links",
        "reservation_status",
        "sid",
        "task_sid",
        "url",
        "worker_name",
        "worker_sid",
        "workspace_sid",
    }
    assert set(body) == (expected | {"attention"} if scope == "worker" else expected)
    assert TWILIO_DATE.match(body["date_created"])
    assert TWILIO_DATE.match(body["date_updated"])
    if scope == "worker":
        assert body["attention"] == 0


def test_list_filters_and_envelope(client: Any, admin: EmulatorAdmin) -> None:
    first = admin.create_reservation()
    second = admin.create_reservation(task_sid=first.task_sid, workspace_sid=first.workspace_sid)
    admin.change(second.sid, "accept")
    listing = reservation_list(client, first, "task")
    assert [r.sid for r in listing.list()] == [first.sid, second.sid]
    assert [r.sid for r in listing.list(reservation_status="accepted")] == [second.sid]
    assert [r.sid for r in listing.list(worker_sid=first.worker_sid)] == [first.sid]
    assert listing.list(worker_sid=first.worker_sid, reservation_status="accepted") == []
    assert len(listing.list(page_size=1)) == 2  # no pagination on this resource (seed 003)

    workspace = f"{client.taskrouter.base_url}/v1/Workspaces/{first.workspace_sid}"
    url = f"{workspace}/Tasks/{first.task_sid}/Reservations"
    response = client.request("GET", url, params={"ReservationStatus": "pending", "PageSize": 20})
    body = json.loads(response.text)
    assert [r["sid"] for r in body["reservations"]] == [first.sid]
    meta = body["meta"]
    assert meta["key"] == "reservations"
    assert meta["page"] == 0
    assert meta["page_size"] == 20
    assert meta["previous_page_url"] is None
    assert meta["next_page_url"] is None
    assert meta["url"] == meta["first_page_url"]
    assert meta["url"].startswith(url + "?")
    assert "ReservationStatus=pending" in meta["url"]


def test_worker_scoped_list(client: Any, admin: EmulatorAdmin) -> None:
    first = admin.create_reservation()
    second = admin.create_reservation(worker_sid=first.worker_sid, workspace_sid=first.workspace_sid)
    admin.change(first.sid, "timeout")
    listing = reservation_list(client, first, "worker")
    everything = listing.list()
    assert [r.sid for r in everything] == [first.sid, second.sid]
    assert [r.sid for r in listing.list(reservation_status="timeout")] == [first.sid]
    workspace = f"{client.taskrouter.base_url}/v1/Workspaces/{first.workspace_sid}"
    url = f"{workspace}/Workers/{first.worker_sid}/Reservations"
    body = json.loads(client.request("GET", url).text)
    assert all(item["attention"] == 0 for item in body["reservations"])


def test_list_etag_changes_when_a_listed_reservation_changes(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    listing = reservation_list(client, seeded, scope)
    before = header(listing.list_with_http_info().headers, "ETag")
    assert before == header(listing.list_with_http_info().headers, "ETag")
    admin.change(seeded.sid, "touch")
    after = header(listing.list_with_http_info().headers, "ETag")
    assert before is not None
    assert after is not None
    assert after != before


@pytest.mark.parametrize(
    ("steps", "final"),
    [
        ([{"reservation_status": "accepted"}], "accepted"),
        ([{"reservation_status": "accepted"}, {"reservation_status": "wrapping"}], "wrapping"),
        (
            [
                {"reservation_status": "accepted"},
                {"reservation_status": "wrapping"},
                {"reservation_status": "completed"},
            ],
            "completed",
        ),
        ([{"reservation_status": "accepted"}, {"reservation_status": "completed"}], "completed"),
        ([{"instruction": "conference", "to": "client:doug", "from_": "+15558675309"}], "accepted"),
        ([{"instruction": "dequeue", "dequeue_from": "+15558675309"}], "accepted"),
        (
            [
                {
                    "instruction": "call",
                    "call_from": "+1555",
                    "call_url": "https://x.test/t",
                    "call_accept": True,
                }
            ],
            "accepted",
        ),
        ([{"instruction": "call", "call_from": "+1555", "call_url": "https://x.test/t"}], "pending"),
        (
            [
                {
                    "instruction": "call",
                    "call_from": "+1555",
                    "call_url": "https://x.test/t",
                    "call_accept": False,
                }
            ],
            "pending",
        ),
        (
            [
                {
                    "instruction": "redirect",
                    "redirect_call_sid": CALL_SID,
                    "redirect_url": "https://x.test/r",
                    "redirect_accept": True,
                }
            ],
            "accepted",
        ),
        (
            [{"instruction": "redirect", "redirect_call_sid": CALL_SID, "redirect_url": "https://x.test/r"}],
            "pending",
        ),
    ],
)
def test_actions_and_instructions_with_if_match(
    client: Any,
    admin: EmulatorAdmin,
    seeded: ReservationInfo,
    scope: str,
    steps: list[dict[str, Any]],
    final: str,
) -> None:
    context = reservation_context(client, seeded, scope)
    etag = header(context.fetch_with_http_info().headers, "ETag")
    for number, params in enumerate(steps, start=1):
        response = context.update_with_http_info(if_match=etag, **params)
        assert response.status_code == 200
        new_etag = header(response.headers, "ETag")
        assert new_etag == str(1 + number)
        etag = new_etag
    assert response.data.reservation_status == final
    assert admin.reservation(seeded.sid).status == final
    log = admin.transitions(seeded.sid)
    assert [entry.version_after for entry in log] == list(range(2, 2 + len(steps)))
    assert log[-1].to_status == final
    assert all(entry.source == "api" for entry in log)


def test_reject_records_the_worker_activity(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    context = reservation_context(client, seeded, scope)
    rejected = context.update(reservation_status="rejected", worker_activity_sid=ACTIVITY)
    assert rejected.reservation_status == "rejected"
    assert admin.reservation(seeded.sid).worker_activity_sid == ACTIVITY
    assert admin.worker(seeded.worker_sid)["activity_sid"] == ACTIVITY
    assert admin.task(seeded.task_sid)["rejections"] == 1
    (entry,) = admin.transitions(seeded.sid)
    assert entry.requested == "ReservationStatus=rejected"


def test_supervise_instruction_on_an_accepted_reservation(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    context = reservation_context(client, seeded, "task")
    context.update(reservation_status="accepted")
    response = context.update_with_http_info(
        instruction="supervise", supervisor="client:boss", supervisor_mode="monitor"
    )
    assert response.data.reservation_status == "accepted"
    assert header(response.headers, "ETag") == "3"


def test_update_without_if_match_applies_unconditionally(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    admin.change(seeded.sid, "touch")
    updated = reservation_context(client, seeded, scope).update(reservation_status="accepted")
    assert updated.reservation_status == "accepted"


@pytest.mark.parametrize("spelling", ["{}", '"{}"', 'W/"{}"', '"0", {}', "*"])
def test_if_match_spellings(client: Any, seeded: ReservationInfo, scope: str, spelling: str) -> None:
    context = reservation_context(client, seeded, scope)
    response = context.update_with_http_info(if_match=spelling.format("1"), reservation_status="accepted")
    assert response.status_code == 200


def test_etag_if_match_412_cycle(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    context = reservation_context(client, seeded, scope)
    etag = header(context.fetch_with_http_info().headers, "ETag")
    admin.change(seeded.sid, "touch")  # someone else changes it in between
    with pytest.raises(TwilioRestException) as refused:
        context.update_with_http_info(if_match=etag, reservation_status="accepted")
    assert (refused.value.status, refused.value.code) == (412, 20412)
    assert "Precondition Failed" in refused.value.msg
    assert admin.reservation(seeded.sid).status == "pending"
    fresh = header(context.fetch_with_http_info().headers, "ETag")
    assert fresh == "2"
    assert context.update_with_http_info(if_match=fresh, reservation_status="accepted").status_code == 200


def test_api_key_and_secret_authenticate(emulator: EmulatorServer, seeded: ReservationInfo) -> None:
    sdk = make_client(emulator.base_url, API_KEY, API_SECRET)
    try:
        assert reservation_context(sdk, seeded, "task").fetch().sid == seeded.sid
    finally:
        close(sdk)


def test_every_response_carries_a_request_id(client: Any, seeded: ReservationInfo) -> None:
    for path in (seeded.task_path, "/v1/Nothing/Here", seeded.task_path + "/Nope"):
        response = client.request("GET", client.taskrouter.base_url + path)
        assert REQUEST_ID.match(response.headers["Twilio-Request-Id"])
