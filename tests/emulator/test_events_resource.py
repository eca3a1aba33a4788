"""The Events resource, read through the real twilio SDK: filters, paging, fetch, errors."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException

from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN


def stream(admin: EmulatorAdmin, count: int) -> tuple[str, list[str]]:
    """A workspace with ``count`` reservations, each created then accepted "in the UI"."""
    workspace = str(admin.create_workspace()["sid"])
    sids = [admin.create_reservation(workspace_sid=workspace).sid for _ in range(count)]
    for sid in sids:
        admin.change(sid, "accept")
    return workspace, sids


def test_list_pages_through_everything_newest_first(client: Any, admin: EmulatorAdmin) -> None:
    workspace, sids = stream(admin, 6)
    admin.create_reservation()  # another workspace's events are not listed
    events = client.taskrouter.v1.workspaces(workspace).events
    listed = events.list(page_size=5)
    assert len(listed) == 12
    assert [event.sid for event in listed] == [
        event.sid for event in reversed(admin.events()) if event.workspace_sid == workspace
    ]
    assert listed[0].event_type == "reservation.accepted"
    assert listed[0].resource_sid == sids[-1]
    assert listed[-1].event_type == "reservation.created"
    assert listed[-1].resource_sid == sids[0]
    first = listed[0]
    assert first.workspace_sid == workspace
    assert first.account_sid == EMULATOR_ACCOUNT_SID
    assert first.resource_type == "Reservation"
    assert first.actor_type == "worker"
    assert isinstance(first.event_date, datetime.datetime)
    assert first.event_date_ms // 1000 == int(first.event_date.timestamp())
    assert first.event_data is not None
    assert first.event_data["reservation_sid"] == sids[-1]
    assert events(first.sid).fetch().event_type == "reservation.accepted"


def test_pages_do_not_shift_when_newer_events_arrive(client: Any, admin: EmulatorAdmin) -> None:
    workspace, sids = stream(admin, 3)
    events = client.taskrouter.v1.workspaces(workspace).events
    page = events.page(page_size=4)
    assert page.next_page_url is not None
    assert "PageToken=" in page.next_page_url
    first = [event.sid for event in page]
    admin.change(sids[0], "complete")  # newer than everything on the first page
    rest = [event.sid for event in page.next_page()]
    assert len(first) == 4
    assert len(rest) == 2
    assert not set(first) & set(rest)
    assert page.next_page().next_page_url is None


def test_filters(client: Any, admin: EmulatorAdmin) -> None:
    workspace, sids = stream(admin, 3)
    admin.time_out(admin.create_reservation(workspace_sid=workspace).sid)
    events = client.taskrouter.v1.workspaces(workspace).events
    (timeout,) = events.list(event_type="reservation.timeout")
    assert timeout.actor_type == "workspace"
    only = events.list(reservation_sid=sids[1])
    assert [event.event_type for event in only] == ["reservation.accepted", "reservation.created"]
    target = admin.reservation(sids[2])
    assert {event.resource_sid for event in events.list(task_sid=target.task_sid)} == {sids[2]}
    assert {event.resource_sid for event in events.list(worker_sid=target.worker_sid)} == {sids[2]}
    assert [event.sid for event in events.list(sid=only[0].sid)] == [only[0].sid]
    assert events.list(task_queue_sid="WQ" + "0" * 32) == []  # no emulated event has one

    now = datetime.datetime.now(datetime.UTC)
    assert len(events.list(start_date=now - datetime.timedelta(minutes=1))) == 8
    assert events.list(start_date=now + datetime.timedelta(minutes=1)) == []
    assert events.list(end_date=now - datetime.timedelta(minutes=1)) == []
    assert len(events.list(minutes=1)) == 8


def test_old_events_fall_out_of_the_default_window(
    emulator: EmulatorServer, client: Any, admin: EmulatorAdmin
) -> None:
    """The default window is the last 15 minutes; StartDate reaches further back (up to 30 days)."""
    workspace, (sid,) = stream(admin, 1)
    reservation = emulator.state.store.reservation(sid)
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=2)
    emulator.state.events.log.record("reservation.rescinded", None, reservation, "admin", old.timestamp())
    events = client.taskrouter.v1.workspaces(workspace).events
    assert [event.event_type for event in events.list()] == ["reservation.accepted", "reservation.created"]
    assert len(events.list(minutes=180)) == 3
    earlier = events.list(
        start_date=old - datetime.timedelta(minutes=1), end_date=old + datetime.timedelta(minutes=1)
    )
    assert [event.event_type for event in earlier] == ["reservation.rescinded"]


def test_errors(emulator: EmulatorServer, client: Any, admin: EmulatorAdmin) -> None:
    workspace, _ = stream(admin, 1)
    events = client.taskrouter.v1.workspaces(workspace).events
    for wrong in ({"page_size": 0}, {"page_size": 1001}, {"start_date": "yesterday"}, {"minutes": -5}):
        with pytest.raises(TwilioException) as refused:  # the SDK's page error: ("...", response)
            events.page(**wrong)
        assert refused.value.args[1].status_code == 400
    with pytest.raises(TwilioException) as missing:
        client.taskrouter.v1.workspaces("WS" + "f" * 32).events.list()
    assert missing.value.args[1].status_code == 404
    with pytest.raises(TwilioRestException) as unknown:
        events("EV" + "0" * 32).fetch()
    assert unknown.value.status == 404
    url = f"{emulator.base_url}/v1/Workspaces/{workspace}/Events"
    assert requests.get(url, timeout=10).status_code == 401
    assert (
        requests.get(
            url, params={"PageToken": "nope"}, auth=(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN), timeout=10
        ).status_code
        == 400
    )
