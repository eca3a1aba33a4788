"""The emulator's pieces without HTTP: store rules, wire helpers, faults, counters, settings."""

from __future__ import annotations

import pickle
import threading

import pytest

from workers.core.parameters import Scope
from workers.core.state_machine import Status
from workers.errors import ConfigurationError, IfMatchMismatch, ResourceConflict, UnknownResource
from workers.testing.emulator.counters import DROPPED, Counters
from workers.testing.emulator.faults import FaultInjector, FaultKind
from workers.testing.emulator.settings import BasicAuth, EmulatorSettings
from workers.testing.emulator.store import Store
from workers.testing.emulator.wire import list_etag, new_request_id, parse_if_match, representation


def test_store_check_and_set_from_many_threads() -> None:
    store = Store()
    reservation = store.create_reservation()
    barrier = threading.Barrier(16)
    results: list[str] = []

    def update() -> None:
        barrier.wait()
        try:
            store.update(
                reservation.sid, {"ReservationStatus": "accepted"}, frozenset({"1"}), new_request_id()
            )
            results.append("applied")
        except IfMatchMismatch:
            results.append("412")

    threads = [threading.Thread(target=update) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["412"] * 15 + ["applied"]
    assert len(store.transitions()) == 1


def test_store_log_is_bounded_but_sequence_continues() -> None:
    store = Store(log_size=2)
    reservation = store.create_reservation()
    for _ in range(5):
        store.change(reservation.sid, "touch")
    assert [entry.sequence for entry in store.transitions()] == [4, 5]
    assert store.reservation(reservation.sid).version == 6


def test_call_without_accept_keeps_pending_but_bumps_the_version() -> None:
    store = Store()
    reservation = store.create_reservation()
    params = {"Instruction": "call", "CallFrom": "+1", "CallUrl": "https://x.test"}
    updated = store.update(reservation.sid, params, None, "RQ")
    assert (updated.status, updated.version) == (Status.PENDING, 2)


def test_representation_matches_seed_001() -> None:
    store = Store()
    reservation = store.create_reservation(worker_name="Doug")
    body = representation(reservation, Scope.WORKER, "https://taskrouter.twilio.com", "AC" + "a" * 32)
    assert body["url"] == (
        f"https://taskrouter.twilio.com/v1/Workspaces/{reservation.workspace_sid}"
        f"/Workers/{reservation.worker_sid}/Reservations/{reservation.sid}"
    )
    assert body["attention"] == 0
    assert "attention" not in representation(reservation, Scope.TASK, "http://h", "AC" + "a" * 32)


@pytest.mark.parametrize(
    ("header", "tags"),
    [("3", {"3"}), ('"3"', {"3"}), ('W/"3"', {"3"}), ('w/"3", "4"', {"3", "4"}), ("*", {"*"}), ("", set())],
)
def test_parse_if_match(header: str, tags: set[str]) -> None:
    assert parse_if_match(header) == tags


def test_list_etag_tracks_versions() -> None:
    store = Store()
    first, second = store.create_reservation(), store.create_reservation()
    before = list_etag([first, second])
    assert list_etag([first]) != before
    touched = store.change(second.sid, "touch")
    assert list_etag([first, touched]) != before


def test_request_ids_are_unique_and_well_formed() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(rid) == 34 and rid.startswith("RQ") for rid in ids)


def test_fault_plans_are_deterministic() -> None:
    def sequence() -> list[FaultKind | None]:
        injector = FaultInjector()
        injector.add({"kind": "drop", "rate": 0.3, "seed": 5})
        plans = [injector.plan("fetch", "WR1") for _ in range(50)]
        return [None if plan is None else plan.failure for plan in plans]

    assert sequence() == sequence()
    assert FaultKind.DROP in sequence()


def test_counters_shape() -> None:
    counters = Counters()
    counters.record("fetch", "WR1", 200)
    counters.record("update", "WR1", 412)
    counters.record("update", "WR1", DROPPED)
    counters.record("list", None, 200)
    assert counters.for_reservation("WR1") == {
        "fetch": {"total": 1, "200": 1},
        "update": {"total": 2, "412": 1, "dropped": 1},
        "list": {"total": 0},
    }
    assert counters.snapshot()["requests"] == 4


def test_basic_auth_accepts_both_credential_pairs() -> None:
    settings = EmulatorSettings(api_key="SK" + "1" * 32, api_secret="s")
    auth = BasicAuth(settings.credentials())
    import base64

    def basic(user: str, password: str, scheme: str = "Basic") -> str:
        return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert auth.allows(basic(settings.account_sid, settings.auth_token))
    assert auth.allows(basic("SK" + "1" * 32, "s", scheme="basic"))
    assert not auth.allows(basic(settings.account_sid, "nope"))
    assert not auth.allows("Bearer x")
    assert not auth.allows("Basic !!!")
    assert not auth.allows(None)


def test_settings_refuse_half_an_api_key() -> None:
    with pytest.raises(ConfigurationError):
        EmulatorSettings(api_key="SK" + "1" * 32)
    with pytest.raises(ConfigurationError):
        EmulatorSettings(account_sid="nope")


@pytest.mark.parametrize(
    "error",
    [
        UnknownResource("Task WT1 does not exist"),
        ResourceConflict("exists"),
        IfMatchMismatch("WR1", "1", "2"),
    ],
)
def test_emulator_errors_survive_pickling(error: Exception) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round trip
    assert type(copy) is type(error)
    assert str(copy) == str(error)
