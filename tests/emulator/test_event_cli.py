"""``reservations emulator``'s event flags, on a real subprocess."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from twilio.request_validator import RequestValidator

from workers.cli import main
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.receiver import CallbackReceiver


def test_help_shows_the_event_flags_and_their_environment() -> None:
    result = CliRunner().invoke(main, ["emulator", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for variable in (
        "EMULATOR_EVENT_CALLBACK_URL",
        "EMULATOR_EVENTS_FILTER",
        "EMULATOR_EVENT_STREAMS_URL",
        "EMULATOR_RESERVATION_TIMEOUT",
        "EMULATOR_CALLBACK_CONCURRENCY",
        "EMULATOR_CALLBACK_QUEUE_SIZE",
    ):
        assert variable in result.output


@pytest.mark.parametrize(
    ("flag", "value"), [("--event-callback-url", "not-a-url"), ("--reservation-timeout", "0")]
)
def test_wrong_event_flags_are_refused(flag: str, value: str) -> None:
    result = CliRunner().invoke(main, ["emulator", flag, value])
    assert result.exit_code == 2


@pytest.mark.acceptance
def test_the_subprocess_calls_back_and_times_out(receiver: CallbackReceiver) -> None:
    receiver.clear()
    url = receiver.url("/cli")
    token = "cli-auth-token"
    args = [
        "--event-callback-url",
        url,
        "--events-filter",
        "reservation.timeout",
        "--reservation-timeout",
        "0.2",
    ]
    with (
        EmulatorProcess(extra_args=[*args, "--auth-token", token]) as emulator,
        EmulatorAdmin(emulator.base_url) as admin,
    ):
        reservation = admin.create_reservation()
        (callback,) = receiver.wait_for(1, path="/cli")
        assert callback.form["EventType"] == "reservation.timeout"
        assert callback.form["ReservationSid"] == reservation.sid
        signature = callback.header("X-Twilio-Signature")
        assert signature is not None
        assert RequestValidator(token).validate(url, callback.form, signature)
        assert admin.reservation(reservation.sid).status == "timeout"
