"""Event Callbacks and Event Streams: every reservation change is sent, signed as Twilio signs it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from tests.emulator.conftest import reservation_context
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.receiver import CallbackReceiver, Received
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN

VALIDATOR = RequestValidator(EMULATOR_AUTH_TOKEN)
ACTIVITY = "WA" + "a" * 32


def delivered(admin: EmulatorAdmin, receiver: CallbackReceiver, path: str | None = None) -> list[Received]:
    assert admin.flush_events()
    return receiver.received(path)


def types(received: list[Received]) -> list[str]:
    return [item.form["EventType"] for item in received]


def test_callbacks_verify_with_twilios_request_validator(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    reservation = admin.create_reservation(workspace_sid=workspace, worker_name="Doug")
    reservation_context(client, reservation, "task").update(reservation_status="accepted")
    received = delivered(admin, callbacks)
    assert types(received) == ["reservation.created", "reservation.accepted"]
    for item in received:
        signature = item.header("X-Twilio-Signature")
        assert signature is not None
        assert VALIDATOR.validate(callbacks.url(), item.form, signature)
        assert not RequestValidator("another-token").validate(callbacks.url(), item.form, signature)
        tampered = {**item.form, "EventType": "reservation.rejected"}
        assert not VALIDATOR.validate(callbacks.url(), tampered, signature)
        assert item.header("Content-Type") == "application/x-www-form-urlencoded"
        assert item.header("I-Twilio-Idempotency-Token") == f"{item.form['AccountSid']}-{item.form['Sid']}"
    accepted = received[1].form
    assert re.fullmatch(r"EV[0-9a-f]{32}", accepted["Sid"])
    assert accepted["ResourceType"] == "Reservation"
    assert accepted["ResourceSid"] == accepted["ReservationSid"] == reservation.sid
    assert (accepted["TaskSid"], accepted["WorkerSid"]) == (reservation.task_sid, reservation.worker_sid)
    assert accepted["WorkspaceSid"] == workspace
    assert accepted["WorkerName"] == "Doug"
    assert int(accepted["TimestampMs"]) // 1000 == int(accepted["Timestamp"])
    assert accepted["EventDescription"]
    assert accepted["TaskAssignmentStatus"] == "assigned"


def test_every_reservation_event_type_is_sent(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    by_api = admin.create_reservation(workspace_sid=workspace)
    context = reservation_context(client, by_api, "task")
    context.update(reservation_status="accepted")
    context.update(reservation_status="wrapping")
    context.update(reservation_status="completed")
    rejected = admin.create_reservation(workspace_sid=workspace)
    reservation_context(client, rejected, "worker").update(
        reservation_status="rejected", worker_activity_sid=ACTIVITY
    )
    in_the_ui = admin.create_reservation(workspace_sid=workspace)
    admin.change(in_the_ui.sid, "accept")
    timed_out = admin.create_reservation(workspace_sid=workspace)
    assert admin.time_out(timed_out.sid).status == "timeout"
    canceled = admin.create_reservation(workspace_sid=workspace)
    admin.change(canceled.sid, "cancel")
    rescinded = admin.create_reservation(workspace_sid=workspace)
    admin.change(rescinded.sid, "rescind")
    admin.emit_event(rescinded.sid, "reservation.failed")
    admin.change(in_the_ui.sid, "touch")  # a bare version bump: no event, as with TaskRouter

    received = delivered(admin, callbacks)
    sent = {(item.form["ReservationSid"], item.form["EventType"]) for item in received}
    assert len(received) == len(sent) == 15
    assert {
        (by_api.sid, "reservation.accepted"),
        (by_api.sid, "reservation.wrapup"),
        (by_api.sid, "reservation.completed"),
        (rejected.sid, "reservation.rejected"),
        (in_the_ui.sid, "reservation.accepted"),
        (timed_out.sid, "reservation.timeout"),
        (canceled.sid, "reservation.canceled"),
        (rescinded.sid, "reservation.rescinded"),
        (rescinded.sid, "reservation.failed"),
    } <= sent
    assert types(received).count("reservation.created") == 6
    rejection = next(item.form for item in received if item.form["EventType"] == "reservation.rejected")
    assert rejection["WorkerActivitySid"] == ACTIVITY
    # The events resource names who acted: the worker (API, "in the UI") or TaskRouter itself.
    actors = {(event.reservation_sid, event.event_type): event.actor_type for event in admin.events()}
    assert actors[(in_the_ui.sid, "reservation.accepted")] == "worker"
    assert actors[(timed_out.sid, "reservation.timeout")] == "workspace"


@pytest.mark.integration
def test_a_reservation_times_out_by_itself(receiver: CallbackReceiver) -> None:
    with EmulatorServer() as emulator, EmulatorAdmin(emulator.base_url) as admin:
        receiver.clear()
        workspace = admin.create_workspace(event_callback_url=receiver.url("/timeouts"))["sid"]
        # ``taken`` is due first: by the time ``lingering`` times out, its timer would have fired too.
        taken = admin.create_reservation(workspace_sid=workspace, timeout=0.2)
        admin.change(taken.sid, "accept")
        lingering = admin.create_reservation(workspace_sid=workspace, timeout=0.2)
        received = receiver.wait_for(4, path="/timeouts")
        timeouts = [item for item in received if item.form["EventType"] == "reservation.timeout"]
        assert [item.form["ReservationSid"] for item in timeouts] == [lingering.sid]
        assert admin.reservation(lingering.sid).status == "timeout"
        assert admin.reservation(taken.sid).status == "accepted"
        (transition,) = [entry for entry in admin.transitions(lingering.sid) if entry.to_status == "timeout"]
        assert transition.source == "timeout"


def test_events_filter_and_workspace_update_through_the_sdk(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    workspaces = client.taskrouter.v1.workspaces(workspace)
    updated = workspaces.update(events_filter="reservation.timeout, reservation.accepted")
    assert updated.events_filter == "reservation.timeout,reservation.accepted"
    assert workspaces.fetch().event_callback_url == callbacks.url()
    reservation = admin.create_reservation(workspace_sid=workspace)
    admin.change(reservation.sid, "accept")
    admin.change(reservation.sid, "complete")
    assert types(delivered(admin, callbacks)) == ["reservation.accepted"]

    moved = callbacks.url("/moved")
    assert workspaces.update(event_callback_url=moved, events_filter="").events_filter is None
    admin.change(admin.create_reservation(workspace_sid=workspace).sid, "rescind")
    assert types(delivered(admin, callbacks, "/moved")) == ["reservation.created", "reservation.rescinded"]

    workspaces.update(event_callback_url="")
    admin.create_reservation(workspace_sid=workspace)
    assert len(delivered(admin, callbacks)) == 3  # nothing more: no URL, no callbacks
    assert len(admin.events()) == 6  # the events resource keeps every event all the same


def test_a_workspace_update_refuses_a_url_twilio_would_refuse(client: Any, admin: EmulatorAdmin) -> None:
    from twilio.base.exceptions import TwilioRestException

    sid = admin.create_workspace()["sid"]
    for url in ("ftp://example.com/x", "/relative", "https://example.com/x#rc=9"):
        with pytest.raises(TwilioRestException) as refused:
            client.taskrouter.v1.workspaces(sid).update(event_callback_url=url)
        assert refused.value.status == 400
    assert client.taskrouter.v1.workspaces(sid).fetch().event_callback_url is None


def test_event_streams_sink_gets_signed_cloud_events(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver
) -> None:
    admin.set_event_streams(callbacks.url("/streams"), event_types=["reservation.accepted"])
    reservation = admin.create_reservation()
    reservation_context(client, reservation, "worker").update(reservation_status="accepted")
    (item,) = delivered(admin, callbacks, "/streams")
    admin.set_event_streams(None)
    url = callbacks.base_url + item.path_qs
    assert "bodySHA256=" in item.path_qs
    signature = item.header("X-Twilio-Signature")
    assert signature is not None
    assert VALIDATOR.validate(url, item.body.decode(), signature)
    assert not VALIDATOR.validate(url, item.body.decode().replace("accepted", "rejected"), signature)
    assert not RequestValidator("another-token").validate(url, item.body.decode(), signature)
    (event,) = json.loads(item.body)
    assert event["type"] == "com.twilio.taskrouter.reservation.accepted"
    assert event["specversion"] == "1.0"
    payload = event["data"]["payload"]
    assert payload["reservation_sid"] == reservation.sid
    assert event["id"] == "NO" + payload["sid"][2:]
    assert item.header("Content-Type") == "application/json"


def test_the_api_is_never_held_up_by_a_slow_receiver(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    callbacks.answer(status=204, delay=1.0)
    reservations = [admin.create_reservation(workspace_sid=workspace) for _ in range(20)]
    for reservation in reservations:
        reservation_context(client, reservation, "task").update(reservation_status="accepted")
    # Every update was answered while the deliveries were still waiting on the receiver.
    assert admin.health()["events"]["queued"] + admin.health()["events"]["in_flight"] > 0
    callbacks.answer()
    assert admin.flush_events(timeout=30)
    assert len(callbacks.received()) == 40


def test_a_non_reservation_event_names_its_own_resource(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    reservation = admin.create_reservation(workspace_sid=workspace)
    admin.emit_event(reservation.sid, "task.created")
    (item,) = [item for item in delivered(admin, callbacks) if item.form["EventType"] == "task.created"]
    assert (item.form["ResourceType"], item.form["ResourceSid"]) == ("Task", reservation.task_sid)
    assert "ReservationSid" not in item.form
    signature = item.header("X-Twilio-Signature")
    assert signature is not None
    assert VALIDATOR.validate(callbacks.url(), item.form, signature)
