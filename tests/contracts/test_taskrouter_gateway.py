"""The TaskRouter gateway's contract: what the applier relies on, run against the in-memory fake
and against the real gateway over HTTP and the twilio SDK, talking to the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pytest

from tests.fakes import FakeGateway
from workers.apply.applier import Gateway
from workers.config import Settings
from workers.core.sids import new_sid
from workers.core.state_machine import Status
from workers.errors import PermanentTaskRouterError, PreconditionFailed
from workers.taskrouter.gateway import ReservationRef, TaskRouterGateway
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EmulatorSettings, emulator_env

ACCEPT = {"reservation_status": "accepted"}


class Side(Protocol):
    """A gateway, and a way to make a pending reservation and to change it behind its back."""

    @property
    def gateway(self) -> Gateway: ...

    def pending(self) -> ReservationRef: ...

    def touch(self, ref: ReservationRef) -> None: ...


@dataclass
class FakeSide:
    gateway: FakeGateway

    def pending(self) -> ReservationRef:
        sid = new_sid("WR")
        self.gateway.reservation_sid = sid
        self.gateway.status = Status.PENDING
        return ReservationRef(new_sid("WS"), sid, task_sid=self.gateway.task_sid)

    def touch(self, ref: ReservationRef) -> None:
        self.gateway.version += 1


@dataclass
class EmulatorSide:
    gateway: TaskRouterGateway
    admin: EmulatorAdmin

    def pending(self) -> ReservationRef:
        info = self.admin.create_reservation()
        return ReservationRef(info.workspace_sid, info.sid, task_sid=info.task_sid)

    def touch(self, ref: ReservationRef) -> None:
        self.admin.change(ref.reservation_sid, "touch")


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorSettings()) as server:
        yield server


@pytest.fixture(params=["fake", pytest.param("emulator", marks=pytest.mark.integration)])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    if request.param == "fake":
        yield FakeSide(FakeGateway())
        return
    server: EmulatorServer = request.getfixturevalue("emulator")
    with EmulatorAdmin(server.base_url) as admin:
        settings = Settings.from_env(emulator_env(server.base_url))
        gateway = TaskRouterGateway.from_settings(settings, timeout=5)
        yield EmulatorSide(gateway, admin)


def test_fetch_returns_the_status_and_an_etag(side: Side) -> None:
    ref = side.pending()
    fetched = side.gateway.fetch(ref)
    assert fetched.sid == ref.reservation_sid
    assert fetched.status is Status.PENDING
    assert fetched.etag is not None
    assert fetched.task_sid == ref.task_sid


def test_an_update_with_the_current_etag_returns_the_new_status_and_a_new_etag(side: Side) -> None:
    ref = side.pending()
    before = side.gateway.fetch(ref)
    updated = side.gateway.update(ref, ACCEPT, if_match=before.etag)
    assert updated.status is Status.ACCEPTED
    assert updated.etag is not None
    assert updated.etag != before.etag
    assert updated.http_status == 200
    after = side.gateway.fetch(ref)
    assert (after.status, after.etag) == (Status.ACCEPTED, updated.etag)


def test_an_update_with_a_stale_etag_is_a_precondition_failure_and_changes_nothing(side: Side) -> None:
    ref = side.pending()
    stale = side.gateway.fetch(ref).etag
    side.touch(ref)
    with pytest.raises(PreconditionFailed) as caught:
        side.gateway.update(ref, ACCEPT, if_match=stale)
    assert (caught.value.status, caught.value.code) == (412, 20412)
    current = side.gateway.fetch(ref)
    assert current.status is Status.PENDING
    assert current.etag != stale


def test_an_unknown_reservation_is_a_permanent_404(side: Side) -> None:
    ref = side.pending()
    missing = ReservationRef(ref.workspace_sid, new_sid("WR"), task_sid=ref.task_sid)
    with pytest.raises(PermanentTaskRouterError) as caught:
        side.gateway.fetch(missing)
    assert (caught.value.status, caught.value.code) == (404, 20404)
    with pytest.raises(PermanentTaskRouterError) as again:
        side.gateway.update(missing, ACCEPT, if_match=None)
    assert again.value.status == 404


def test_a_transition_the_state_machine_refuses_is_a_permanent_400(side: Side) -> None:
    ref = side.pending()
    current = side.gateway.fetch(ref)
    with pytest.raises(PermanentTaskRouterError) as caught:
        side.gateway.update(ref, {"reservation_status": "completed"}, if_match=current.etag)
    assert caught.value.status == 400
    assert side.gateway.fetch(ref).status is Status.PENDING
