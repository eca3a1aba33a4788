"""TaskRouter's rules beyond single updates: the 1,000-rejections rule, behind-the-back changes,
the transition log and the request counters."""

from __future__ import annotations

from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException

from tests.emulator.conftest import reservation_context
from workers.core.state_machine import REJECTIONS_BEFORE_TASK_CANCELED
from workers.errors import InvalidParameter, ResourceConflict, TransitionRefused, UnknownResource
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo


def test_the_thousandth_rejection_cancels_the_task(client: Any, admin: EmulatorAdmin) -> None:
    rejected = admin.create_reservation(task_rejections=REJECTIONS_BEFORE_TASK_CANCELED - 1)
    waiting = admin.create_reservation(workspace_sid=rejected.workspace_sid, task_sid=rejected.task_sid)
    accepted = admin.create_reservation(
        workspace_sid=rejected.workspace_sid, task_sid=rejected.task_sid, status="accepted"
    )
    reservation_context(client, rejected, "task").update(reservation_status="rejected")

    task = admin.task(rejected.task_sid)
    assert (task["status"], task["rejections"]) == ("canceled", REJECTIONS_BEFORE_TASK_CANCELED)
    assert reservation_context(client, waiting, "task").fetch().reservation_status == "canceled"
    assert admin.reservation(accepted.sid).status == "accepted"
    (cascade,) = admin.transitions(waiting.sid)
    assert (cascade.from_status, cascade.to_status, cascade.requested) == ("pending", "canceled", "cancel")
    assert cascade.note is not None
    assert "1000 rejections" in cascade.note
    (reject,) = admin.transitions(rejected.sid)
    assert cascade.request_id == reject.request_id


def test_fewer_rejections_leave_the_task_alone(client: Any, admin: EmulatorAdmin) -> None:
    rejected = admin.create_reservation(task_rejections=REJECTIONS_BEFORE_TASK_CANCELED - 2)
    waiting = admin.create_reservation(workspace_sid=rejected.workspace_sid, task_sid=rejected.task_sid)
    reservation_context(client, rejected, "worker").update(reservation_status="rejected")
    assert admin.task(rejected.task_sid)["status"] == "active"
    assert admin.reservation(waiting.sid).status == "pending"


@pytest.mark.parametrize(
    ("verb", "status"), [("timeout", "timeout"), ("rescind", "rescinded"), ("cancel", "canceled")]
)
def test_taskrouter_takes_a_pending_reservation_away(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, verb: str, status: str
) -> None:
    context = reservation_context(client, seeded, "task")
    changed = admin.change(seeded.sid, verb)
    assert (changed.status, changed.version) == (status, 2)
    with pytest.raises(TwilioRestException) as refused:
        context.update(if_match="2", reservation_status="accepted")
    assert (refused.value.status, refused.value.code) == (400, 20001)
    assert f"is already in state [{status}]" in refused.value.msg
    (entry,) = admin.transitions(seeded.sid)
    assert (entry.source, entry.requested, entry.to_status) == ("admin", verb, status)


def test_another_agent_accepts_first(client: Any, admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    context = reservation_context(client, seeded, "task")
    etag = context.fetch_with_http_info().headers["ETag"]
    admin.change(seeded.sid, "accept")
    with pytest.raises(TwilioRestException) as refused:
        context.update(if_match=etag, reservation_status="accepted")
    assert refused.value.status == 412
    assert context.fetch().reservation_status == "accepted"


def test_admin_refusals_are_the_projects_errors(admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    with pytest.raises(TransitionRefused, match=r"cannot be updated to \[completed\]"):
        admin.change(seeded.sid, "complete")
    with pytest.raises(InvalidParameter) as caught:
        admin.change(seeded.sid, "explode")
    assert caught.value.parameter == "action"
    with pytest.raises(UnknownResource):
        admin.change("WR" + "0" * 32, "touch")
    with pytest.raises(ResourceConflict):
        admin.create_reservation(sid=seeded.sid)
    with pytest.raises(InvalidParameter):
        admin.create_reservation(task_sid="WTshort")


def test_seeding_reuses_and_creates_resources(admin: EmulatorAdmin) -> None:
    workspace = admin.create_workspace(friendly_name="Support")
    worker = admin.create_worker(workspace["sid"], friendly_name="Alice")
    task = admin.create_task(workspace["sid"], rejections=3)
    reservation = admin.create_reservation(
        workspace_sid=workspace["sid"], task_sid=task["sid"], worker_sid=worker["sid"]
    )
    assert reservation.worker_name == "Alice"
    assert admin.task(task["sid"])["reservation_sids"] == [reservation.sid]
    assert admin.task(task["sid"])["rejections"] == 3


def test_transition_log_filters(client: Any, admin: EmulatorAdmin) -> None:
    first, second = admin.create_reservation(), admin.create_reservation()
    reservation_context(client, first, "task").update(reservation_status="accepted")
    admin.change(second.sid, "touch")
    reservation_context(client, first, "task").update(reservation_status="completed")
    everything = admin.transitions()
    assert [entry.sequence for entry in everything] == [1, 2, 3]
    assert [entry.reservation_sid for entry in everything] == [first.sid, second.sid, first.sid]
    assert [entry.sequence for entry in admin.transitions(first.sid)] == [1, 3]
    assert [entry.sequence for entry in admin.transitions(since=2)] == [3]
    touch = everything[1]
    assert (touch.from_status, touch.to_status, touch.version_before, touch.version_after) == (
        "pending",
        "pending",
        1,
        2,
    )
    assert everything[0].request_id is not None
    assert everything[0].request_id.startswith("RQ")


def test_counters_count_every_request(client: Any, admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    context = reservation_context(client, seeded, "task")
    context.fetch()
    context.fetch()
    context.update(if_match="1", reservation_status="accepted")
    with pytest.raises(TwilioRestException):
        context.update(if_match="1", reservation_status="completed")
    counts = admin.reservation_counts(seeded.sid)
    assert (counts.fetch.total, counts.update.total, counts.calls) == (2, 2, 4)
    assert counts.update.status(200) == 1
    assert counts.update.status(412) == 1
    overall = admin.counters()
    assert overall["requests"] == 4
    assert overall["by_status"] == {"200": 3, "412": 1}
    admin.reset_counters()
    assert admin.reservation_counts(seeded.sid).calls == 0


def test_reset_forgets_everything(admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    admin.add_fault("latency", latency_ms=1)
    admin.reset()
    with pytest.raises(UnknownResource):
        admin.reservation(seeded.sid)
    assert admin.faults() == []
    assert admin.transitions() == []


def test_seeding_an_existing_task_keeps_its_rejections_unless_told(admin: EmulatorAdmin) -> None:
    task = admin.create_task(rejections=5)
    assert admin.create_task(task["workspace_sid"], task["sid"])["rejections"] == 5
    assert admin.create_task(task["workspace_sid"], task["sid"], rejections=7)["rejections"] == 7
