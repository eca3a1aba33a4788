"""Delivery faults (drop, duplicate, delay, reorder), Twilio's retry rules, and a full queue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulator.conftest import reservation_context
from workers.errors import InvalidParameter
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.events import ConnectionOverrides
from workers.testing.emulator.process import free_port
from workers.testing.emulator.receiver import CallbackReceiver
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EmulatorSettings


def event_stream(admin: EmulatorAdmin, workspace: str, count: int) -> list[str]:
    """``count`` reservations created then accepted "in the UI": 2 x count events; their SIDs."""
    sids = [admin.create_reservation(workspace_sid=workspace).sid for _ in range(count)]
    for sid in sids:
        admin.change(sid, "accept")
    return sids


def sent(admin: EmulatorAdmin, receiver: CallbackReceiver, path: str | None = None) -> list[tuple[str, str]]:
    assert admin.flush_events()
    return [(item.form["ReservationSid"], item.form["EventType"]) for item in receiver.received(path)]


def test_drop_only_what_the_rule_names(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    (first,) = event_stream(admin, workspace, 1)
    second = admin.create_reservation(workspace_sid=workspace).sid
    assert admin.flush_events()
    callbacks.clear()
    admin.add_callback_fault("drop", event_types=["reservation.accepted"], reservation_sids=[second], limit=1)
    admin.change(second, "accept")
    admin.change(second, "complete")
    admin.change(first, "complete")
    assert sorted(sent(admin, callbacks)) == sorted(
        [(second, "reservation.completed"), (first, "reservation.completed")]
    )
    (dropped,) = [entry for entry in admin.deliveries(second) if entry.outcome == "dropped"]
    assert (dropped.event_type, dropped.faults) == ("reservation.accepted", ["drop"])
    # The dropped event is still in the Events resource, where reconciliation finds it.
    assert dropped.event_sid in {event.sid for event in admin.events(second)}
    assert admin.callback_faults()[0]["fired"] == 1


def test_duplicates_are_byte_for_byte_the_same(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    admin.add_callback_fault("duplicate", copies=3, event_types=["reservation.accepted"])
    (sid,) = event_stream(admin, workspace, 1)
    assert admin.flush_events()
    copies = [item for item in callbacks.received() if item.form["EventType"] == "reservation.accepted"]
    assert len(copies) == 3
    assert len({(item.body, item.header("X-Twilio-Signature")) for item in copies}) == 1
    assert copies[0].form["ReservationSid"] == sid
    assert [entry.copy for entry in admin.deliveries(sid) if entry.event_type == "reservation.accepted"] == [
        1,
        2,
        3,
    ]


@pytest.fixture(scope="module")
def ordered() -> Iterator[EmulatorServer]:
    """An emulator that sends one delivery at a time, so that order is the faults' doing alone."""
    with EmulatorServer(EmulatorSettings(callback_concurrency=1)) as server:
        yield server


@pytest.fixture
def ordered_admin(ordered: EmulatorServer, callbacks: CallbackReceiver) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(ordered.base_url) as client:
        client.reset()
        yield client


@pytest.mark.integration
def test_in_order_without_faults(ordered_admin: EmulatorAdmin, callbacks: CallbackReceiver) -> None:
    workspace = ordered_admin.create_workspace(event_callback_url=callbacks.url("/ordered"))["sid"]
    sids = event_stream(ordered_admin, workspace, 5)
    expected = [(sid, "reservation.created") for sid in sids] + [
        (sid, "reservation.accepted") for sid in sids
    ]
    assert sent(ordered_admin, callbacks, "/ordered") == expected


@pytest.mark.integration
def test_reorder_lets_later_deliveries_overtake(
    ordered_admin: EmulatorAdmin, callbacks: CallbackReceiver
) -> None:
    workspace = ordered_admin.create_workspace(event_callback_url=callbacks.url("/ordered"))["sid"]
    ordered_admin.add_callback_fault("reorder", hold=2, event_types=["reservation.created"], limit=1)
    first, second, third = event_stream(ordered_admin, workspace, 3)
    order = sent(ordered_admin, callbacks, "/ordered")
    assert order[:3] == [
        (second, "reservation.created"),
        (third, "reservation.created"),
        (first, "reservation.created"),
    ]
    assert len(order) == 6


@pytest.mark.integration
def test_delay_holds_one_back_without_holding_up_the_rest(
    ordered_admin: EmulatorAdmin, callbacks: CallbackReceiver
) -> None:
    workspace = ordered_admin.create_workspace(event_callback_url=callbacks.url("/ordered"))["sid"]
    first = ordered_admin.create_reservation(workspace_sid=workspace).sid
    ordered_admin.add_callback_fault("delay", delay_ms=300, event_types=["reservation.accepted"], limit=1)
    ordered_admin.change(first, "accept")
    later = [ordered_admin.create_reservation(workspace_sid=workspace).sid for _ in range(3)]
    order = sent(ordered_admin, callbacks, "/ordered")
    assert order[0] == (first, "reservation.created")
    assert order[-1] == (first, "reservation.accepted")
    assert order[1:-1] == [(sid, "reservation.created") for sid in later]


def test_a_seed_gives_the_same_faults_every_time(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    def pattern() -> dict[tuple[int, str], str]:
        """Which of the stream's deliveries were dropped, by (reservation's place, event type)."""
        admin.clear_callback_faults()
        admin.add_callback_fault("drop", rate=0.5, seed=11)
        sids = event_stream(admin, workspace, 10)
        assert admin.flush_events()
        deliveries = [entry for entry in admin.deliveries() if entry.reservation_sid in sids]
        return {(sids.index(entry.reservation_sid), entry.event_type): entry.outcome for entry in deliveries}

    first, second = pattern(), pattern()
    assert first == second
    assert len(first) == 20
    assert 0 < list(first.values()).count("dropped") < 20


def test_an_error_answer_is_not_retried_unless_the_url_asks(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    callbacks.answer(status=500)
    (sid,) = [admin.create_reservation(workspace_sid=workspace).sid]
    assert admin.flush_events()
    assert [entry.outcome for entry in admin.deliveries(sid)] == ["500"]

    admin.set_event_callback(workspace, callbacks.url("/retried") + "#rc=2&rp=5xx")
    admin.change(sid, "accept")
    assert admin.flush_events()
    retried = [entry for entry in admin.deliveries(sid) if entry.event_type == "reservation.accepted"]
    assert [(entry.attempt, entry.outcome) for entry in retried] == [(1, "500"), (2, "500"), (3, "500")]
    assert all(entry.url == callbacks.url("/retried") for entry in retried)  # the fragment is never sent
    received = callbacks.received("/retried")
    assert len(received) == 3
    assert len({item.header("X-Twilio-Signature") for item in received}) == 1


def test_a_connection_that_cannot_be_made_is_retried_once(admin: EmulatorAdmin) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/events"
    workspace = admin.create_workspace(event_callback_url=nobody)["sid"]
    sid = admin.create_reservation(workspace_sid=workspace).sid
    assert admin.flush_events()
    assert [(entry.attempt, entry.outcome) for entry in admin.deliveries(sid)] == [
        (1, "connect_error"),
        (2, "connect_error"),
    ]


@pytest.mark.integration
def test_a_full_queue_logs_overflow_and_loses_nothing_silently(callbacks: CallbackReceiver) -> None:
    settings = EmulatorSettings(callback_concurrency=1, callback_queue_size=2)
    with EmulatorServer(settings) as emulator, EmulatorAdmin(emulator.base_url) as admin:
        callbacks.answer(delay=0.3)
        workspace = admin.create_workspace(event_callback_url=callbacks.url("/full"))["sid"]
        sids = [admin.create_reservation(workspace_sid=workspace).sid for _ in range(8)]
        callbacks.answer()
        assert admin.flush_events()
        outcomes = [entry.outcome for entry in admin.deliveries()]
        assert outcomes.count("overflow") >= 1
        assert outcomes.count("overflow") + outcomes.count("204") == 8
        assert {event.reservation_sid for event in admin.events()} == set(sids)


def test_wrong_fault_specs_are_refused(admin: EmulatorAdmin) -> None:
    for kind, fields in (
        ("explode", {}),
        ("delay", {}),
        ("duplicate", {"copies": 1}),
        ("drop", {"rate": 2.0}),
        ("drop", {"channels": ["pigeon"]}),
        ("drop", {"limit": 0}),
    ):
        with pytest.raises(InvalidParameter):
            admin.add_callback_fault(kind, **fields)
    assert admin.callback_faults() == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/e", ConnectionOverrides()),
        (
            "https://example.com/e#rc=3&rp=4xx,5xx&ct=1000",
            ConnectionOverrides(1.0, 15.0, 15.0, 3, frozenset({"4xx", "5xx"})),
        ),
        (
            "https://example.com/e#rt=2000&tt=4000&rp=all",
            ConnectionOverrides(5.0, 2.0, 4.0, 1, frozenset({"all"})),
        ),
    ],
)
def test_connection_overrides(url: str, expected: ConnectionOverrides) -> None:
    assert ConnectionOverrides.of(url) == expected


@pytest.mark.parametrize(
    "fragment", ["rc=6", "rc=x", "rp=sometimes", "ct=0", "ct=10001", "rt=15001", "tt=99"]
)
def test_wrong_connection_overrides_are_refused(fragment: str) -> None:
    with pytest.raises(InvalidParameter):
        ConnectionOverrides.of(f"https://example.com/e#{fragment}")


def test_api_accept_reaches_the_receiver_once_without_faults(
    client: Any, admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    reservation = admin.create_reservation(workspace_sid=workspace)
    reservation_context(client, reservation, "task").update(reservation_status="accepted")
    assert sent(admin, callbacks) == [
        (reservation.sid, "reservation.created"),
        (reservation.sid, "reservation.accepted"),
    ]


def test_a_slow_receiver_times_out_and_is_retried_only_when_asked(
    admin: EmulatorAdmin, callbacks: CallbackReceiver, workspace: str
) -> None:
    callbacks.answer(delay=0.6)
    admin.set_event_callback(workspace, callbacks.url("/slow") + "#rt=200")
    once = admin.create_reservation(workspace_sid=workspace).sid
    assert admin.flush_events()
    assert [entry.outcome for entry in admin.deliveries(once)] == ["timeout"]
    admin.set_event_callback(workspace, callbacks.url("/slow") + "#rt=200&rp=rt&rc=1")
    twice = admin.create_reservation(workspace_sid=workspace).sid
    assert admin.flush_events()
    assert [(entry.attempt, entry.outcome) for entry in admin.deliveries(twice)] == [
        (1, "timeout"),
        (2, "timeout"),
    ]
