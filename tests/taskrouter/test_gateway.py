"""The TaskRouter gateway against the emulator in strict-header mode, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import urllib3

from workers.config import Settings
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    Throttled,
    TransientTaskRouterError,
)
from workers.taskrouter.gateway import ReservationRef, TaskRouterGateway, header
from workers.taskrouter.http import Urllib3HttpClient
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.process import free_port
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_CREDENTIALS, EmulatorSettings


@pytest.fixture(scope="module")
def strict_emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorSettings(strict_headers=True)) as server:
        yield server


@pytest.fixture
def admin(strict_emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(strict_emulator.base_url) as client:
        client.reset()
        yield client


@pytest.fixture
def gateway(strict_emulator: EmulatorServer) -> TaskRouterGateway:
    return TaskRouterGateway.from_settings(
        Settings(taskrouter_base_url=strict_emulator.base_url, twilio=EMULATOR_CREDENTIALS), timeout=5
    )


@pytest.fixture
def reservation(admin: EmulatorAdmin) -> ReservationInfo:
    return admin.create_reservation()


def task_ref(r: ReservationInfo) -> ReservationRef:
    return ReservationRef(r.workspace_sid, r.sid, task_sid=r.task_sid)


def worker_ref(r: ReservationInfo) -> ReservationRef:
    return ReservationRef(r.workspace_sid, r.sid, worker_sid=r.worker_sid)


def test_task_scoped_fetch_and_update_carry_the_etag(
    gateway: TaskRouterGateway, reservation: ReservationInfo
) -> None:
    fetched = gateway.fetch(task_ref(reservation))
    assert (fetched.status, fetched.etag) == ("pending", reservation.etag)
    assert fetched.request_id is not None
    assert fetched.request_id.startswith("RQ")
    updated = gateway.update(task_ref(reservation), {"reservation_status": "accepted"}, if_match=fetched.etag)
    # Strict mode spells the update's header "Etag": the gateway reads it whatever its casing.
    assert updated.status == "accepted"
    assert updated.etag is not None
    assert updated.etag != fetched.etag


def test_worker_scoped_fetch_takes_the_etag_from_the_task_scoped_one(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    fetched = gateway.fetch(worker_ref(reservation))
    assert fetched.etag == reservation.etag
    counts = admin.reservation_counts(reservation.sid)
    assert counts.fetch.total == 2  # the worker-scoped fetch had no ETag; the task-scoped one did
    updated = gateway.update(
        worker_ref(reservation), {"reservation_status": "accepted"}, if_match=fetched.etag
    )
    assert updated.status == "accepted"
    assert updated.etag is None  # strict: no ETag on the worker-scoped update


def test_stale_etag_is_a_precondition_failure(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    stale = gateway.fetch(task_ref(reservation)).etag
    admin.change(reservation.sid, "touch")
    with pytest.raises(PreconditionFailed) as caught:
        gateway.update(task_ref(reservation), {"reservation_status": "accepted"}, if_match=stale)
    assert (caught.value.status, caught.value.code) == (412, 20412)
    assert caught.value.request_id is not None
    assert admin.reservation(reservation.sid).status == "pending"


def test_throttling_carries_retry_after(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    admin.add_fault("throttle", retry_after=7)
    with pytest.raises(Throttled) as caught:
        gateway.fetch(task_ref(reservation))
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (429, 20429, 7.0)


@pytest.mark.parametrize(("kind", "status"), [("internal_error", 500), ("unavailable", 503)])
def test_server_errors_are_transient(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo, kind: str, status: int
) -> None:
    admin.add_fault(kind, operations=["update"])
    with pytest.raises(TransientTaskRouterError) as caught:
        gateway.update(task_ref(reservation), {"reservation_status": "accepted"}, if_match=None)
    assert caught.value.status == status
    assert not isinstance(caught.value, Throttled)


def test_dropped_connection_is_transient(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    admin.add_fault("drop", operations=["update"], after_apply=True)
    with pytest.raises(TransientTaskRouterError) as caught:
        gateway.update(task_ref(reservation), {"reservation_status": "accepted"}, if_match=reservation.etag)
    assert caught.value.status is None
    # The update landed before the connection dropped: the next fetch must show it.
    admin.clear_faults()
    assert gateway.fetch(task_ref(reservation)).status == "accepted"


def test_unknown_reservation_and_bad_parameters_are_permanent(
    gateway: TaskRouterGateway, reservation: ReservationInfo
) -> None:
    missing = ReservationRef(reservation.workspace_sid, "WR" + "f" * 32, task_sid=reservation.task_sid)
    with pytest.raises(PermanentTaskRouterError) as caught:
        gateway.fetch(missing)
    assert (caught.value.status, caught.value.code) == (404, 20404)
    with pytest.raises(PermanentTaskRouterError) as bad:
        gateway.update(task_ref(reservation), {"instruction": "conference", "max_participants": 900}, None)
    assert (bad.value.status, bad.value.code) == (400, 20001)
    assert "MaxParticipants" in str(bad.value)


def test_wrong_credentials_are_permanent(
    strict_emulator: EmulatorServer, reservation: ReservationInfo
) -> None:
    settings = Settings.from_env(
        {
            "TASKROUTER_BASE_URL": strict_emulator.base_url,
            "TWILIO_ACCOUNT_SID": "AC" + "9" * 32,
            "TWILIO_AUTH_TOKEN": "x",
        }
    )
    with pytest.raises(PermanentTaskRouterError) as caught:
        TaskRouterGateway.from_settings(settings).fetch(task_ref(reservation))
    assert (caught.value.status, caught.value.code) == (401, 20003)


def test_header_lookup_ignores_case() -> None:
    assert header({"Etag": "3"}, "ETag") == "3"
    assert header({"etag": "4"}, "ETag") == "4"
    assert header({}, "ETag") is None


def test_a_list_parameter_is_sent_as_repeated_fields(
    gateway: TaskRouterGateway, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    """Twilio reads ``ConferenceStatusCallbackEvent=start&ConferenceStatusCallbackEvent=end``;
    anything else (a Python list's repr, say) is an invalid enum value and a 400."""
    arguments = {
        "instruction": "conference",
        "conference_status_callback": "https://example.test/conference",
        "conference_status_callback_event": ["start", "end"],
    }
    updated = gateway.update(task_ref(reservation), arguments, if_match=reservation.etag)
    assert updated.status == "accepted"


def test_no_answer_in_time_is_transient(strict_emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    reservation = admin.create_reservation()
    admin.add_fault("latency", latency_ms=2000)
    impatient = TaskRouterGateway.from_settings(
        Settings(taskrouter_base_url=strict_emulator.base_url, twilio=EMULATOR_CREDENTIALS), timeout=0.2
    )
    started = time.monotonic()
    with pytest.raises(TransientTaskRouterError, match="did not answer in time") as caught:
        impatient.fetch(task_ref(reservation))
    assert caught.value.status is None
    assert time.monotonic() - started < 1.5


def test_the_proxy_comes_from_the_environment_and_no_proxy_is_honoured(
    strict_emulator: EmulatorServer, reservation: ReservationInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(taskrouter_base_url=strict_emulator.base_url, twilio=EMULATOR_CREDENTIALS)
    dead_proxy = f"http://127.0.0.1:{free_port()}"  # a proxy that is down
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", dead_proxy)
    monkeypatch.setenv("http_proxy", dead_proxy)
    with pytest.raises(TransientTaskRouterError, match="connection failed"):
        TaskRouterGateway.from_settings(settings, timeout=2).fetch(task_ref(reservation))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert (
        TaskRouterGateway.from_settings(settings, timeout=2).fetch(task_ref(reservation)).status == "pending"
    )


def test_a_refused_connection_is_a_connection_failure_not_a_timeout(reservation: ReservationInfo) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    gateway = TaskRouterGateway.from_settings(
        Settings(taskrouter_base_url=nobody, twilio=EMULATOR_CREDENTIALS), timeout=2
    )
    with pytest.raises(TransientTaskRouterError, match="connection failed"):
        gateway.fetch(task_ref(reservation))


def test_a_proxy_login_in_the_proxy_url_is_sent_to_the_proxy() -> None:
    client = Urllib3HttpClient(5, "http://agent%40acme:p%3Ass@proxy.example:3128")
    expected = urllib3.make_headers(proxy_basic_auth="agent@acme:p:ss")
    assert isinstance(client._pool, urllib3.ProxyManager)
    assert client._pool.proxy_headers == expected
    anonymous = Urllib3HttpClient(5, "http://proxy.example:3128")._pool
    assert isinstance(anonymous, urllib3.ProxyManager)
    assert anonymous.proxy_headers == {}
