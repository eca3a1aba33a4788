"""The pure core: parameter catalogue and state machine."""

from __future__ import annotations

import pickle

import pytest

from workers.core.parameters import BY_WIRE, PII_WIRE_NAMES, SECRET_WIRE_NAMES, Scope, parse_update_form
from workers.core.state_machine import (
    Status,
    status_after_client_update,
    status_after_instruction,
    status_after_system_event,
)
from workers.errors import (
    ConfigurationError,
    IfMatchMismatch,
    InvalidParameter,
    PermanentTaskRouterError,
    PreconditionFailed,
    ReservationsError,
    Throttled,
    TransientTaskRouterError,
    TransitionRefused,
    UnknownResource,
)

SID = "WR" + "a" * 32


def test_pii_and_secret_marks_follow_the_seeds() -> None:
    assert {
        "To",
        "From",
        "CallTo",
        "CallFrom",
        "DequeueTo",
        "DequeueFrom",
        "SipAuthUsername",
    } == PII_WIRE_NAMES
    assert {"SipAuthPassword"} == SECRET_WIRE_NAMES


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"ReservationStatus": ["accepted"]}, {"ReservationStatus": "accepted"}),
        (
            {"Instruction": ["Conference"], "MaxParticipants": ["250"]},
            {"Instruction": "conference", "MaxParticipants": 250},
        ),
        (
            {
                "Instruction": ["call"],
                "CallFrom": ["+15558675309"],
                "CallUrl": ["https://x.test/a"],
                "CallAccept": ["true"],
            },
            {
                "Instruction": "call",
                "CallFrom": "+15558675309",
                "CallUrl": "https://x.test/a",
                "CallAccept": True,
            },
        ),
        (
            {
                "Instruction": ["dequeue"],
                "DequeueFrom": ["+1555"],
                "DequeueStatusCallbackEvent": ["answered", "completed"],
            },
            {
                "Instruction": "dequeue",
                "DequeueFrom": "+1555",
                "DequeueStatusCallbackEvent": ["answered", "completed"],
            },
        ),
    ],
)
def test_valid_forms_parse_to_typed_values(form: dict[str, list[str]], expected: dict[str, object]) -> None:
    assert parse_update_form(form, Scope.TASK) == expected


@pytest.mark.parametrize(
    ("form", "named"),
    [
        ({"ReservationStatus": ["accepted"], "MaxParticipants": ["1"]}, "MaxParticipants"),
        ({"Instruction": ["conference"], "MaxParticipants": ["251"]}, "MaxParticipants"),
        ({"ReservationStatus": ["rejected"], "WorkerActivitySid": ["WAnothex"]}, "WorkerActivitySid"),
        ({"ReservationStatus": ["maybe"]}, "ReservationStatus"),
        ({"Instruction": ["dequeue"]}, "DequeueFrom"),
        ({"Instruction": ["call"], "CallFrom": ["+1"]}, "CallUrl"),
        ({"Instruction": ["redirect"], "RedirectUrl": ["https://x.test"]}, "RedirectCallSid"),
        ({"Instruction": ["call"], "CallFrom": ["+1"], "CallUrl": ["not a url"]}, "CallUrl"),
        ({"ReservationStatus": ["accepted"], "Muted": ["yes"]}, "Muted"),
        ({"ReservationStatus": ["accepted"], "Bogus": ["1"]}, "Bogus"),
        ({"ReservationStatus": ["accepted"], "Instruction": ["conference"]}, "Instruction"),
        ({}, "ReservationStatus"),
    ],
)
def test_invalid_forms_name_the_parameter(form: dict[str, list[str]], named: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        parse_update_form(form, Scope.TASK)
    assert caught.value.parameter == named
    assert named in str(caught.value)


def test_supervisor_is_task_scoped_only() -> None:
    form = {"Instruction": ["supervise"], "Supervisor": ["client:boss"]}
    assert parse_update_form(form, Scope.TASK)["Supervisor"] == "client:boss"
    with pytest.raises(InvalidParameter):
        parse_update_form(form, Scope.WORKER)


def test_every_parameter_has_a_distinct_keyword() -> None:
    assert len({p.keyword for p in BY_WIRE.values()}) == len(BY_WIRE)


@pytest.mark.parametrize(
    ("current", "requested", "expected"),
    [
        (Status.PENDING, Status.ACCEPTED, Status.ACCEPTED),
        (Status.PENDING, Status.REJECTED, Status.REJECTED),
        (Status.ACCEPTED, Status.WRAPPING, Status.WRAPPING),
        (Status.ACCEPTED, Status.COMPLETED, Status.COMPLETED),
        (Status.WRAPPING, Status.COMPLETED, Status.COMPLETED),
    ],
)
def test_client_transitions_allowed(current: Status, requested: Status, expected: Status) -> None:
    assert status_after_client_update(SID, current, requested) is expected


@pytest.mark.parametrize(
    ("current", "requested"),
    [
        (Status.ACCEPTED, Status.ACCEPTED),
        (Status.PENDING, Status.COMPLETED),
        (Status.TIMEOUT, Status.ACCEPTED),
        (Status.COMPLETED, Status.WRAPPING),
        (Status.PENDING, Status.TIMEOUT),
    ],
)
def test_client_transitions_refused_with_twilio_wording(current: Status, requested: Status) -> None:
    with pytest.raises(TransitionRefused) as caught:
        status_after_client_update(SID, current, requested)
    assert str(caught.value) == (
        f"Reservation {SID} is already in state [{current}] and cannot be updated to [{requested}]"
    )


@pytest.mark.parametrize(
    ("instruction", "accept", "expected"),
    [
        ("conference", False, Status.ACCEPTED),
        ("dequeue", False, Status.ACCEPTED),
        ("call", True, Status.ACCEPTED),
        ("call", False, Status.PENDING),
        ("redirect", True, Status.ACCEPTED),
        ("redirect", False, Status.PENDING),
    ],
)
def test_instructions_from_pending(instruction: str, accept: bool, expected: Status) -> None:
    assert status_after_instruction(SID, Status.PENDING, instruction, accept) is expected


def test_instruction_refused_unless_pending() -> None:
    with pytest.raises(TransitionRefused, match=r"is not currently in a Pending state\.$"):
        status_after_instruction(SID, Status.ACCEPTED, "conference", False)


def test_system_events_only_from_pending() -> None:
    assert status_after_system_event(SID, Status.PENDING, Status.TIMEOUT) is Status.TIMEOUT
    with pytest.raises(TransitionRefused):
        status_after_system_event(SID, Status.COMPLETED, Status.RESCINDED)


@pytest.mark.parametrize(
    "error",
    [
        ReservationsError("x"),
        ConfigurationError("bad env"),
        InvalidParameter("MaxParticipants", "too big"),
        TransitionRefused("Reservation WR... is not currently in a Pending state."),
        PreconditionFailed("HTTP 412: Precondition Failed", 412, 20412, "RQ1"),
        PermanentTaskRouterError("HTTP 404: not found", 404, 20404, None),
        TransientTaskRouterError("connection dropped"),
        Throttled("HTTP 429: Too Many Requests", 429, 20429, "RQ2", retry_after=3.0),
        IfMatchMismatch("WR" + "a" * 32, "3", "4"),
        UnknownResource("The requested resource /v1/x was not found"),
    ],
)
def test_errors_survive_pickling(error: ReservationsError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round trip
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    assert copy.message == str(copy)


def test_masking_for_display_hides_pii_and_drops_secrets() -> None:
    from workers.core.redaction import MASK, mask_message

    message = {
        "action_id": "x",
        "params": {
            "call_from": "+15550001111",
            "call_url": "https://x.test",
            "sip_auth_password": "hunter2",
            "odd": 1,
        },
    }
    shown = mask_message(message)
    assert shown["params"] == {"call_from": MASK, "call_url": "https://x.test", "odd": MASK}
    assert "hunter2" not in repr(shown)
    assert "+15550001111" not in repr(shown)
    assert message["params"]["call_from"] == "+15550001111"  # type: ignore[index]
