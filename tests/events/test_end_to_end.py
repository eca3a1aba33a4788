"""The emulator sends TaskRouter's events over real HTTP, signed, to the events API served on a
real port, which records them in a real ledger: changes in the UI and timeouts appear as
source=event transitions; faulty delivery (duplicates, delays, reordering) still gives one row per
transition; a dropped callback is recovered by `reservations reconcile`; our own accept and its
callback are one row."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from tests.events.conftest import TOKEN, transitions
from tests.support.events import ServedApp
from workers.apply.applier import ActionApplier, Done
from workers.cli import main
from workers.config import Settings, TwilioCredentials
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.retry import RetryPolicy
from workers.events.api import CALLBACK_PATH, EventsApiConfig, create_app
from workers.ledger.models import LedgerRow
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.taskrouter.gateway import TaskRouterGateway
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.process import free_port
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EmulatorSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(db_url: str) -> Iterator[ServedApp]:
    """The events API as `reservations events-api` builds it: its own pool and group commit."""
    port = free_port()
    app = create_app(EventsApiConfig(db_url, f"http://127.0.0.1:{port}", auth_token=TOKEN))
    with ServedApp(app, port) as server:
        yield server


@pytest.fixture(scope="module")
def emulator(served: ServedApp) -> Iterator[EmulatorServer]:
    with EmulatorServer(EmulatorSettings(event_callback_url=served.url + CALLBACK_PATH)) as server:
        yield server


@pytest.fixture
def admin(emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(emulator.base_url) as client:
        client.clear_callback_faults()
        yield client
        client.clear_callback_faults()


def eventually(probe: Callable[[], list[LedgerRow]], count: int, timeout: float = 15.0) -> list[LedgerRow]:
    deadline = time.monotonic() + timeout
    while True:
        rows = probe()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


def learnt(reader: LedgerReader, sid: str) -> list[tuple[str | None, str | None, str | None]]:
    return [(r.from_status, r.to_status, r.source) for r in transitions(reader, sid)]


def test_an_agent_accepting_in_the_ui_and_a_timeout_are_recorded_as_events(
    admin: EmulatorAdmin, reader: LedgerReader
) -> None:
    in_the_ui = admin.create_reservation(worker_name="Alice")
    timing_out = admin.create_reservation(timeout=0.2)  # TaskRouter times it out by itself
    eventually(lambda: transitions(reader, in_the_ui.sid), 1)
    changed = time.monotonic()
    admin.change(in_the_ui.sid, "accept")
    eventually(lambda: transitions(reader, in_the_ui.sid), 2)
    seen_after = time.monotonic() - changed
    eventually(lambda: transitions(reader, timing_out.sid), 2)
    assert learnt(reader, in_the_ui.sid) == [(None, "pending", "event"), ("pending", "accepted", "event")]
    # Its two callbacks (created, then timeout 0.2 s later) may arrive in either order.
    assert sorted((to, source) for _, to, source in learnt(reader, timing_out.sid)) == [
        ("pending", "event"),
        ("timeout", "event"),
    ]
    print(f"\nan accept in the UI was in the ledger {seen_after * 1000:.0f} ms after the change")


def test_duplicated_delayed_and_reordered_callbacks_give_one_row_per_transition(
    admin: EmulatorAdmin, reader: LedgerReader, emulator: EmulatorServer
) -> None:
    admin.add_callback_fault("duplicate", copies=3, rate=0.5, seed=1)
    admin.add_callback_fault("delay", delay_ms=300, rate=0.3, seed=2)
    admin.add_callback_fault("reorder", hold=2, rate=0.3, seed=3)
    reservations = [admin.create_reservation() for _ in range(6)]
    client = _sdk(emulator)
    for n, reservation in enumerate(reservations):
        context = client.taskrouter.v1.workspaces(reservation.workspace_sid).tasks(reservation.task_sid)
        reservation_context = context.reservations(reservation.sid)
        if n % 3 == 0:
            reservation_context.update(reservation_status="rejected")
        else:
            reservation_context.update(reservation_status="accepted")
            reservation_context.update(reservation_status="wrapping")
            if n % 3 == 1:
                reservation_context.update(reservation_status="completed")
    assert admin.flush_events(timeout=20)
    faults = {fault["kind"]: fault["fired"] for fault in admin.callback_faults()}
    assert faults["duplicate"] > 0, faults
    expected = {
        0: ["pending", "rejected"],
        1: ["pending", "accepted", "wrapping", "completed"],
        2: ["pending", "accepted", "wrapping"],
    }
    for n, reservation in enumerate(reservations):
        want = expected[n % 3]
        rows = eventually(lambda sid=reservation.sid: transitions(reader, sid), len(want))  # type: ignore[misc]
        assert sorted(r.to_status or "" for r in rows) == sorted(want), reservation.sid
        state = reader.reservation(reservation.sid)
        assert state is not None
        assert state.status == want[-1]


def test_a_dropped_callback_is_recovered_by_reconcile(
    admin: EmulatorAdmin, reader: LedgerReader, emulator: EmulatorServer, db_url: str
) -> None:
    reservation = admin.create_reservation()
    admin.add_callback_fault("drop", event_types=["reservation.accepted"], reservation_sids=[reservation.sid])
    admin.change(reservation.sid, "accept")
    admin.change(reservation.sid, "complete")
    assert admin.flush_events()
    rows = eventually(lambda: transitions(reader, reservation.sid), 2)
    assert sorted(r.to_status or "" for r in rows) == ["completed", "pending"]  # accepted never arrived
    learnt_before = learnt(reader, reservation.sid)
    env = {
        "TASKROUTER_BASE_URL": emulator.base_url,
        "TWILIO_ACCOUNT_SID": EMULATOR_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "DATABASE_URL": db_url,
    }
    args = ["reconcile", "--workspace", reservation.workspace_sid, "--since", "1h"]
    first = CliRunner().invoke(main, [*args, "--reservation", reservation.sid], env=env)
    assert first.exit_code == 0, first.output
    assert "1 new transition(s) recorded, 2 already in the ledger" in first.output
    recovered = learnt(reader, reservation.sid)  # the callbacks may have arrived in either order
    assert sorted(recovered, key=lambda row: str(row[1])) == sorted(
        [*learnt_before, ("pending", "accepted", "event")], key=lambda row: str(row[1])
    )
    assert recovered[-1] == ("pending", "accepted", "event")
    state = reader.reservation(reservation.sid)
    assert state is not None
    assert state.status == "completed"  # the late accepted did not move it back
    again = CliRunner().invoke(main, args, env=env)
    assert again.exit_code == 0, again.output
    assert " 0 new transition(s) recorded" in again.output
    assert len(transitions(reader, reservation.sid)) == 3


def test_our_own_accept_and_its_callback_are_one_transition(
    admin: EmulatorAdmin, reader: LedgerReader, writer: PostgresLedgerWriter, emulator: EmulatorServer
) -> None:
    applier = ActionApplier(writer, _gateway(emulator), RetryPolicy())
    for _ in range(3):
        reservation = admin.create_reservation()
        eventually(lambda sid=reservation.sid: transitions(reader, sid), 1)  # type: ignore[misc]
        result = applier.apply(_accept(reservation))
        assert isinstance(result, Done)
        assert result.outcome is Outcome.APPLIED
        assert admin.flush_events()
        time.sleep(0.05)
        rows = transitions(reader, reservation.sid)
        accepted = [r for r in rows if r.to_status == "accepted"]
        assert len(accepted) == 1, rows
        assert accepted[0].source in ("action", "event")


def test_an_event_makes_the_next_action_fetch_first_instead_of_meeting_a_412(
    admin: EmulatorAdmin, reader: LedgerReader, writer: PostgresLedgerWriter, emulator: EmulatorServer
) -> None:
    applier = ActionApplier(writer, _gateway(emulator), RetryPolicy())
    reservation = admin.create_reservation()
    eventually(lambda: transitions(reader, reservation.sid), 1)
    assert applier.apply(_accept(reservation)) == Done(Outcome.APPLIED, "applied")
    assert admin.flush_events()
    cached = reader.reservation(reservation.sid)
    assert cached is not None
    accepted = next(r for r in transitions(reader, reservation.sid) if r.to_status == "accepted")
    # Our answer's ETag, kept when the answer came first (the accept's echo changes nothing);
    # unknown when the echo came first (the answer then found its transition recorded).
    assert (cached.etag is not None) == (accepted.source == "action")
    admin.change(reservation.sid, "wrapup")  # an agent in the UI: the cached ETag is stale now
    eventually(lambda: transitions(reader, reservation.sid), 3)
    state = reader.reservation(reservation.sid)
    assert state is not None
    assert (state.status, state.etag) == ("wrapping", None)
    before = admin.reservation_counts(reservation.sid)
    assert applier.apply(_accept(reservation, ActionKind.COMPLETE)).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    after = admin.reservation_counts(reservation.sid)
    assert (after.fetch.total - before.fetch.total, after.update.status(412) - before.update.status(412)) == (
        1,
        0,
    )


def _gateway(emulator: EmulatorServer) -> TaskRouterGateway:
    settings = Settings(
        taskrouter_base_url=emulator.base_url,
        twilio=TwilioCredentials(EMULATOR_ACCOUNT_SID, EMULATOR_ACCOUNT_SID, TOKEN),
    )
    return TaskRouterGateway.from_settings(settings)


def _accept(reservation: ReservationInfo, kind: ActionKind = ActionKind.ACCEPT) -> Action:
    return Action(
        uuid.uuid4(),
        kind,
        reservation.workspace_sid,
        reservation.sid,
        task_sid=reservation.task_sid,
        worker_sid=reservation.worker_sid,
    )


def _sdk(emulator: EmulatorServer) -> Any:
    from twilio.rest import Client

    client = Client(EMULATOR_ACCOUNT_SID, TOKEN)
    client.taskrouter.base_url = emulator.base_url
    return client
