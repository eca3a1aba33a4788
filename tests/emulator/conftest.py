"""Fixtures for the emulator's tests: one in-process emulator per header mode, the twilio SDK
pointed at it over real HTTP, and a clean slate (model, log, counters, faults) for every test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from twilio.rest import Client

from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.receiver import CallbackReceiver
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN, EmulatorSettings

API_KEY = "SK" + "1" * 32
API_SECRET = "emulator-api-secret"


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorServer]:
    settings = EmulatorSettings(api_key=API_KEY, api_secret=API_SECRET)
    with EmulatorServer(settings) as server:
        yield server


@pytest.fixture(scope="session")
def strict_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorSettings(strict_headers=True)) as server:
        yield server


@pytest.fixture
def admin(emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(emulator.base_url) as client:
        client.reset()
        yield client


@pytest.fixture
def strict_admin(strict_emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(strict_emulator.base_url) as client:
        client.reset()
        yield client


def twilio_client(
    base_url: str, username: str = EMULATOR_ACCOUNT_SID, password: str = EMULATOR_AUTH_TOKEN
) -> Any:
    """The real twilio SDK, its TaskRouter domain pointed at the emulator."""
    client = Client(username, password, account_sid=EMULATOR_ACCOUNT_SID)
    client.taskrouter.base_url = base_url
    return client


def close(client: Any) -> None:
    client.http_client.session.close()


@pytest.fixture
def client(emulator: EmulatorServer) -> Iterator[Any]:
    sdk = twilio_client(emulator.base_url)
    yield sdk
    close(sdk)


@pytest.fixture
def strict_client(strict_emulator: EmulatorServer) -> Iterator[Any]:
    sdk = twilio_client(strict_emulator.base_url)
    yield sdk
    close(sdk)


@pytest.fixture
def seeded(admin: EmulatorAdmin) -> ReservationInfo:
    return admin.create_reservation(worker_name="Doug")


@pytest.fixture(params=["task", "worker"])
def scope(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def reservation_context(client: Any, reservation: ReservationInfo, scope: str) -> Any:
    """``.tasks(task).reservations(sid)`` or ``.workers(worker).reservations(sid)``."""
    workspace = client.taskrouter.v1.workspaces(reservation.workspace_sid)
    parent = (
        workspace.tasks(reservation.task_sid)
        if scope == "task"
        else workspace.workers(reservation.worker_sid)
    )
    return parent.reservations(reservation.sid)


def reservation_list(client: Any, reservation: ReservationInfo, scope: str) -> Any:
    workspace = client.taskrouter.v1.workspaces(reservation.workspace_sid)
    parent = (
        workspace.tasks(reservation.task_sid)
        if scope == "task"
        else workspace.workers(reservation.worker_sid)
    )
    return parent.reservations


def header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


@pytest.fixture(scope="session")
def receiver() -> Iterator[CallbackReceiver]:
    """A recording HTTP receiver for Event Callbacks and Event Streams deliveries."""
    with CallbackReceiver() as server:
        yield server


@pytest.fixture
def callbacks(receiver: CallbackReceiver, admin: EmulatorAdmin) -> Iterator[CallbackReceiver]:
    """The receiver, cleared and answering 204, after the emulator has delivered everything it had."""
    admin.flush_events()
    receiver.clear()
    receiver.answer()
    yield receiver
    receiver.answer()


@pytest.fixture
def workspace(admin: EmulatorAdmin, callbacks: CallbackReceiver) -> str:
    """A workspace whose Event Callbacks go to the receiver."""
    return str(admin.create_workspace(event_callback_url=callbacks.url())["sid"])
