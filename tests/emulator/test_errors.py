"""Every error class surfaces through the twilio SDK with the right HTTP status and Twilio code."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException

from tests.emulator.conftest import close, reservation_context, reservation_list, twilio_client
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN

OTHER = {"WS": "WS" + "e" * 32, "WT": "WT" + "e" * 32, "WK": "WK" + "e" * 32, "WR": "WR" + "e" * 32}


def refused(call: Any, **params: Any) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as caught:
        call(**params)
    return caught.value


def list_refused(listing: Any) -> tuple[int, int]:
    """The SDK's list raises a bare ``TwilioException("Unable to fetch page", response)``."""
    with pytest.raises(TwilioException) as caught:
        listing.list()
    response = caught.value.args[1]
    return response.status_code, json.loads(response.text)["code"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"reservation_status": "maybe"}, "ReservationStatus"),
        ({"reservation_status": "rejected", "worker_activity_sid": "WAnothex"}, "WorkerActivitySid"),
        ({"instruction": "conference", "max_participants": 251}, "MaxParticipants"),
        ({"instruction": "dequeue"}, "DequeueFrom"),
        ({"instruction": "call", "call_from": "+1555"}, "CallUrl"),
        ({"instruction": "call", "call_from": "+1555", "call_url": "not a url"}, "CallUrl"),
        ({"instruction": "redirect", "redirect_url": "https://x.test"}, "RedirectCallSid"),
        (
            {"reservation_status": "accepted", "status_callback_event": ["initiated", "bogus"]},
            "StatusCallbackEvent",
        ),
        ({}, "ReservationStatus"),
    ],
)
def test_bad_parameter_is_400_20001_and_changes_nothing(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str, params: dict[str, Any], named: str
) -> None:
    error = refused(reservation_context(client, seeded, scope).update, **params)
    assert (error.status, error.code) == (400, 20001)
    assert named in error.msg
    after = admin.reservation(seeded.sid)
    assert (after.status, after.version) == ("pending", 1)
    assert admin.transitions(seeded.sid) == []


def test_supervise_parameters_are_refused_on_the_worker_scope(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    url = client.taskrouter.base_url + seeded.worker_path
    response = client.request("POST", url, data={"Instruction": "supervise", "Supervisor": "client:boss"})
    assert response.status_code == 400
    assert "Supervisor" in response.text


@pytest.mark.parametrize(
    ("seed_status", "params", "message"),
    [
        (
            "accepted",
            {"reservation_status": "accepted"},
            "is already in state [accepted] and cannot be updated to [accepted]",
        ),
        (
            "pending",
            {"reservation_status": "completed"},
            "is already in state [pending] and cannot be updated to [completed]",
        ),
        (
            "timeout",
            {"reservation_status": "accepted"},
            "is already in state [timeout] and cannot be updated to [accepted]",
        ),
        ("accepted", {"instruction": "conference"}, "is not currently in a Pending state."),
        (
            "pending",
            {"instruction": "supervise", "supervisor": "client:boss"},
            "is not currently in an Accepted state.",
        ),
    ],
)
def test_invalid_transition_is_400_20001_with_taskrouters_wording(
    client: Any, admin: EmulatorAdmin, seed_status: str, params: dict[str, Any], message: str
) -> None:
    seeded = admin.create_reservation(status=seed_status)
    error = refused(reservation_context(client, seeded, "task").update, if_match="1", **params)
    assert (error.status, error.code) == (400, 20001)
    assert f"Reservation {seeded.sid} {message}" in error.msg
    assert admin.reservation(seeded.sid).version == 1


@pytest.mark.parametrize("password", ["wrong-token", ""])
def test_wrong_credentials_are_401_20003(
    emulator: EmulatorServer, seeded: ReservationInfo, scope: str, password: str
) -> None:
    sdk = twilio_client(emulator.base_url, password=password or "x")
    try:
        context = reservation_context(sdk, seeded, scope)
        for call in (context.fetch, lambda: context.update(reservation_status="accepted")):
            error = refused(call)
            assert (error.status, error.code) == (401, 20003)
        assert list_refused(reservation_list(sdk, seeded, scope)) == (401, 20003)
    finally:
        close(sdk)


def test_missing_credentials_are_401(emulator: EmulatorServer, seeded: ReservationInfo) -> None:
    response = requests.get(emulator.base_url + seeded.task_path, timeout=5)
    assert response.status_code == 401
    assert response.json()["code"] == 20003
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def _variants(seeded: ReservationInfo, admin: EmulatorAdmin) -> list[ReservationInfo]:
    """Paths that name no reservation: unknown parts, or a reservation of another task/worker."""
    other = admin.create_reservation(workspace_sid=seeded.workspace_sid)
    return [
        ReservationInfo(**{**_fields(seeded), "workspace_sid": OTHER["WS"]}),
        ReservationInfo(**{**_fields(seeded), "task_sid": OTHER["WT"], "worker_sid": OTHER["WK"]}),
        ReservationInfo(**{**_fields(seeded), "sid": OTHER["WR"]}),
        ReservationInfo(**{**_fields(seeded), "task_sid": other.task_sid, "worker_sid": other.worker_sid}),
    ]


def _fields(info: ReservationInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in info.__slots__}


def test_unknown_resources_are_404_20404(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    for wrong in _variants(seeded, admin):
        context = reservation_context(client, wrong, scope)
        for call in (context.fetch, lambda c=context: c.update(reservation_status="accepted")):
            error = refused(call)
            assert (error.status, error.code) == (404, 20404)
            assert "The requested resource /v1/Workspaces/" in error.msg
            assert "was not found" in error.msg
    assert list_refused(reservation_list(client, _variants(seeded, admin)[0], scope)) == (404, 20404)
    assert admin.reservation(seeded.sid).version == 1


def test_stale_if_match_is_412_20412(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str
) -> None:
    error = refused(
        reservation_context(client, seeded, scope).update, if_match="7", reservation_status="accepted"
    )
    assert (error.status, error.code) == (412, 20412)
    assert admin.reservation(seeded.sid).version == 1


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [("throttle", 429, 20429), ("internal_error", 500, 20500), ("unavailable", 503, 20503)],
)
@pytest.mark.parametrize("operation", ["fetch", "update"])
def test_injected_errors_surface_with_status_and_code(
    client: Any,
    admin: EmulatorAdmin,
    seeded: ReservationInfo,
    scope: str,
    kind: str,
    status: int,
    code: int,
    operation: str,
) -> None:
    admin.add_fault(kind, operations=[operation], retry_after=7)
    context = reservation_context(client, seeded, scope)
    call = context.fetch if operation == "fetch" else lambda: context.update(reservation_status="accepted")
    error = refused(call)
    assert (error.status, error.code) == (status, code)
    if kind == "throttle":
        assert client.http_client._test_only_last_response.headers["Retry-After"] == "7"
    assert admin.reservation(seeded.sid).version == 1
    assert admin.reservation_counts(seeded.sid).calls == 1


def test_injected_list_errors(client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str) -> None:
    admin.add_fault("unavailable", operations=["list"])
    assert list_refused(reservation_list(client, seeded, scope)) == (503, 20503)


@pytest.mark.parametrize("operation", ["fetch", "update"])
def test_dropped_connection_is_a_transport_error(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo, scope: str, operation: str
) -> None:
    admin.add_fault("drop", operations=[operation])
    context = reservation_context(client, seeded, scope)
    call = context.fetch if operation == "fetch" else lambda: context.update(reservation_status="accepted")
    with pytest.raises(requests.exceptions.ConnectionError):
        call()
    assert admin.reservation(seeded.sid).version == 1
    counts = admin.reservation_counts(seeded.sid)
    assert getattr(counts, operation).status("dropped") == 1
    admin.clear_faults()
    assert context.fetch().reservation_status == "pending"  # the next request gets through


def test_drop_after_apply_applies_the_update_but_never_answers(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("drop", operations=["update"], after_apply=True)
    context = reservation_context(client, seeded, "task")
    with pytest.raises(requests.exceptions.ConnectionError):
        context.update(if_match="1", reservation_status="accepted")
    assert admin.reservation(seeded.sid).status == "accepted"
    admin.clear_faults()
    error = refused(context.update, if_match="1", reservation_status="accepted")
    assert error.status == 412


def test_unsupported_method_is_405(client: Any, seeded: ReservationInfo) -> None:
    response = client.request("DELETE", client.taskrouter.base_url + seeded.task_path)
    assert response.status_code == 405


@pytest.mark.parametrize(
    ("query", "named"),
    [({"ReservationStatus": "maybe"}, "ReservationStatus"), ({"PageSize": "0"}, "PageSize")],
)
def test_bad_list_filters_are_400(
    client: Any, seeded: ReservationInfo, query: dict[str, str], named: str
) -> None:
    url = client.taskrouter.base_url + seeded.task_path.rsplit("/", 1)[0]
    response = client.request("GET", url, params=query)
    assert response.status_code == 400
    body = json.loads(response.text)
    assert body["code"] == 20001
    assert named in body["message"]


def test_latency_after_apply_lands_the_update_before_the_slow_answer(
    emulator: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("latency", operations=["update"], latency_ms=1500, after_apply=True)
    url = emulator.base_url + seeded.task_path
    auth = (EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)
    with pytest.raises(requests.exceptions.Timeout):
        requests.post(url, data={"ReservationStatus": "accepted"}, auth=auth, timeout=0.3)
    # The client gave up; TaskRouter had already applied the update.
    assert admin.reservation(seeded.sid).status == "accepted"
