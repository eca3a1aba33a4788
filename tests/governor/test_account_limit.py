"""The emulator's account concurrency limit, met through the real twilio SDK over HTTP: without the
governor a burst is refused with 429 (20429); under it the same burst never is."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from workers.config import Settings
from workers.core.governor import BudgetPolicy
from workers.errors import ReservationsError, TaskRouterError, Throttled
from workers.ledger.leases import PostgresLeases
from workers.taskrouter.gateway import ReservationRef, TaskRouterGateway
from workers.taskrouter.governor import Governor
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import emulator_env

BURST = 8
LIMIT = 3


@pytest.fixture
def reservation(admin: EmulatorAdmin) -> ReservationInfo:
    found = admin.create_reservation()
    admin.add_fault("latency", latency_ms=150, operations=["fetch"])
    return found


def _burst(
    emulator: EmulatorServer, reservation: ReservationInfo, governor: Governor | None = None
) -> list[TaskRouterError | None]:
    """BURST threads fetch the reservation at once, each with its own gateway (as workers do)."""
    settings = Settings.from_env(emulator_env(emulator.base_url))
    ref = ReservationRef(reservation.workspace_sid, reservation.sid, task_sid=reservation.task_sid)

    def fetch(_: int) -> TaskRouterError | None:
        gateway = TaskRouterGateway.from_settings(settings, governor=governor)
        try:
            gateway.fetch(ref)
        except TaskRouterError as exc:
            return exc
        return None

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(fetch, range(BURST)))


@pytest.mark.parametrize("retry_after", [None, 2])
def test_beyond_the_limit_requests_are_refused_with_20429(
    emulator: EmulatorServer, admin: EmulatorAdmin, reservation: ReservationInfo, retry_after: int | None
) -> None:
    admin.set_concurrency(LIMIT, retry_after=retry_after)
    errors = _burst(emulator, reservation)
    refused = [error for error in errors if error is not None]
    assert refused, "a burst past the limit must meet 429s"
    assert all(isinstance(error, Throttled) for error in refused)
    assert {(error.status, error.code, error.retry_after) for error in refused} == {
        (429, 20429, None if retry_after is None else float(retry_after))
    }
    state = admin.concurrency()
    assert state["peak"] <= LIMIT
    assert state["refused"] == len(refused)
    assert admin.counters()["by_status"]["429"] == len(refused)


def test_the_limit_is_off_by_default_and_answers_say_how_close_the_account_is(
    emulator: EmulatorServer, admin: EmulatorAdmin, reservation: ReservationInfo
) -> None:
    assert admin.concurrency()["limit"] is None
    assert _burst(emulator, reservation) == [None] * BURST
    admin.set_concurrency(50)
    assert _burst(emulator, reservation) == [None] * BURST
    # The gateway read Twilio-Concurrent-Requests and X-Rate-Limit-* off the answers.
    concurrent = REGISTRY.get_sample_value("reservations_taskrouter_concurrent_requests")
    assert concurrent is not None
    assert 1 <= concurrent <= BURST
    assert REGISTRY.get_sample_value("reservations_taskrouter_rate_limit") == 50
    remaining = REGISTRY.get_sample_value("reservations_taskrouter_rate_remaining")
    assert remaining is not None
    assert 50 - BURST <= remaining < 50


@pytest.fixture
def governor(db_url: str) -> Iterator[Callable[[int], Governor]]:
    started: list[Governor] = []

    def start(budget: int) -> Governor:
        account = "AC" + uuid.uuid4().hex
        store = PostgresLeases(db_url, account, BudgetPolicy(budget), ttl=30.0)
        governor = Governor(store, slot_wait=30.0)
        governor.start()
        started.append(governor)
        return governor

    yield start
    for governor in started:
        governor.close()


def test_under_the_governor_the_same_burst_is_never_refused(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    reservation: ReservationInfo,
    governor: Callable[[int], Governor],
) -> None:
    admin.set_concurrency(LIMIT)
    governed = governor(LIMIT)
    assert _burst(emulator, reservation, governed) == [None] * BURST
    state = admin.concurrency()
    assert state["refused"] == 0
    assert state["admitted"] == BURST
    assert state["peak"] == LIMIT  # the whole budget was used, never more


def test_a_429_reaches_the_governor_and_shrinks_the_fleets_budget(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    reservation: ReservationInfo,
    governor: Callable[[int], Governor],
) -> None:
    # Another application of the account takes capacity we cannot see: the limit is below our budget.
    admin.set_concurrency(2)
    governed = governor(8)
    errors = _burst(emulator, reservation, governed)
    assert any(isinstance(error, Throttled) for error in errors)
    lease = governed.beat()
    assert lease is not None
    assert lease.budget < 8


def test_the_admin_api_refuses_a_nonsense_limit_and_reset_lifts_it(admin: EmulatorAdmin) -> None:
    for limit, retry_after in ((0, None), (5, -1)):
        with pytest.raises(ReservationsError, match="at least"):
            admin.set_concurrency(limit, retry_after)
    assert admin.set_concurrency(5, 1)["limit"] == 5
    admin.reset()
    assert admin.concurrency()["limit"] is None
