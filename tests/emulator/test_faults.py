"""Fault injection is deterministic, filterable and removable."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException

from tests.emulator.conftest import reservation_context
from workers.errors import InvalidParameter
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo


def outcomes(context: Any, count: int) -> list[int]:
    seen = []
    for _ in range(count):
        try:
            context.fetch()
            seen.append(200)
        except TwilioRestException as error:
            seen.append(error.status)
    return seen


def test_same_seed_same_sequence(client: Any, admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    context = reservation_context(client, seeded, "task")
    fault = admin.add_fault("throttle", rate=0.5, seed=42, operations=["fetch"])
    first = outcomes(context, 30)
    admin.remove_fault(fault)
    admin.add_fault("throttle", rate=0.5, seed=42, operations=["fetch"])
    second = outcomes(context, 30)
    assert first == second
    assert 0 < first.count(429) < 30
    admin.clear_faults()
    admin.add_fault("throttle", rate=0.5, seed=7, operations=["fetch"])
    assert outcomes(context, 30) != first


def test_faults_are_limited_to_their_reservations_and_operations(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    other = admin.create_reservation()
    admin.add_fault("internal_error", reservation_sids=[seeded.sid], operations=["update"])
    assert reservation_context(client, seeded, "task").fetch().sid == seeded.sid
    assert reservation_context(client, other, "task").update(reservation_status="accepted").sid == other.sid
    with pytest.raises(TwilioRestException) as refused:
        reservation_context(client, seeded, "task").update(reservation_status="accepted")
    assert refused.value.status == 500
    (description,) = admin.faults()
    assert (description["eligible"], description["fired"]) == (1, 1)


def test_latency_delays_without_blocking_other_requests(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("latency", latency_ms=200, jitter_ms=50, operations=["fetch"])
    started = time.monotonic()
    reservation_context(client, seeded, "task").fetch()
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 2.0


def test_conflict_storm_makes_updates_412_and_logs_the_touch(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("conflict_storm", rate=1.0)
    context = reservation_context(client, seeded, "task")
    etag = context.fetch_with_http_info().headers["ETag"]
    with pytest.raises(TwilioRestException) as refused:
        context.update(if_match=etag, reservation_status="accepted")
    assert refused.value.status == 412
    after = admin.reservation(seeded.sid)
    assert (after.status, after.version) == ("pending", 2)
    (touch,) = admin.transitions(seeded.sid)
    assert (touch.source, touch.requested, touch.version_after) == ("fault", "touch", 2)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "explode"},
        {"kind": "throttle", "rate": 1.5},
        {"kind": "throttle", "operations": ["delete"]},
        {"kind": "conflict_storm", "operations": ["fetch"]},
        {"kind": "throttle", "after_apply": True},
        {"kind": "latency", "latency_ms": -1},
        {"kind": "throttle", "seed": "x"},
    ],
)
def test_bad_fault_specs_are_refused(admin: EmulatorAdmin, spec: dict[str, Any]) -> None:
    kind = spec.pop("kind")
    with pytest.raises(InvalidParameter):
        admin.add_fault(kind, **spec)


def test_a_status_race_changes_the_status_first_and_the_update_meets_a_412(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("status_race", seed=3)
    context = reservation_context(client, seeded, "task")
    with pytest.raises(TwilioRestException) as refused:
        context.update(reservation_status="accepted", if_match=seeded.etag)
    assert refused.value.status == 412
    (race,) = admin.transitions(seeded.sid)
    assert (race.source, race.from_status, race.note) == ("fault", "pending", "injected status race")
    assert race.to_status in {"accepted", "rejected", "timeout", "canceled", "rescinded"}
    (logged,) = admin.updates(seeded.sid)
    assert (logged.answer, logged.landed, logged.faults) == (412, False, ["status_race"])
    with pytest.raises(InvalidParameter):
        admin.add_fault("status_race", operations=["fetch"])


def test_the_update_log_says_what_landed_and_whose_answer_was_lost(
    client: Any, admin: EmulatorAdmin, seeded: ReservationInfo
) -> None:
    admin.add_fault("drop", operations=["update"], after_apply=True)
    context = reservation_context(client, seeded, "task")
    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's connection error, whatever its class
        context.update(instruction="call", call_from="+15550001111", call_url="https://example.test/t")
    (logged,) = admin.updates(seeded.sid)
    assert (logged.landed, logged.answer, logged.answer_lost) == (True, "dropped", True)
    assert (logged.from_status, logged.to_status, logged.landed_version) == ("pending", "pending", 2)
    assert logged.params is not None
    assert logged.params["Instruction"] == "call"
    assert logged.faults == ["drop_after_apply"]
    assert admin.reservation(seeded.sid).version == 2
