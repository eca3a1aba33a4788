"""The If-Match protocol, against fakes of the ledger and the gateway."""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

from tests.fakes import FakeGateway, FakeLedgerWriter
from workers.apply.applier import ActionApplier, Delivery, Done, RetryLater
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.retry import RetryPolicy
from workers.core.state_machine import Status
from workers.errors import PermanentTaskRouterError, Throttled, TransientTaskRouterError
from workers.ledger.events import Conflict, Transition
from workers.ledger.models import Source

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WS, WT, WR = "WS" + "1" * 32, "WT" + "2" * 32, "WR" + "3" * 32


def make(kind: ActionKind = ActionKind.ACCEPT, **fields: Any) -> Action:
    return Action(uuid.uuid4(), kind, WS, WR, task_sid=WT, **fields)


def moved(row: object) -> tuple[str | None, str, str | None, str | None, uuid.UUID | None]:
    """What a transition row says moved: from, to, the ETags before and after, and whose action."""
    assert isinstance(row, Transition)
    return row.from_status, row.to_status, row.etag_before, row.etag_after, row.action_id


def applier(ledger: FakeLedgerWriter, gateway: FakeGateway, **policy: Any) -> ActionApplier:
    return ActionApplier(
        ledger,
        gateway,
        RetryPolicy(**policy),
        rng=random.Random(3),
        clock=lambda: NOW,
        sleep=lambda _: None,
    )


def test_accept_is_applied_with_one_fetch_and_one_update() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    result = applier(ledger, gateway).apply(make())
    assert result == Done(Outcome.APPLIED, "applied")
    assert (gateway.fetches, gateway.updates) == (1, 1)
    assert gateway.status is Status.ACCEPTED
    assert ledger.kinds() == ["observed", "intent", "transition"]
    first_seen, _intent, transition = ledger.rows
    assert moved(first_seen) == (None, "pending", None, "0", None)
    assert moved(transition) == ("pending", "accepted", "0", "1", ANY)
    assert ledger.locked == [WR]
    assert [(row.source) for row in (first_seen, transition) if isinstance(row, Transition)] == [
        Source.FETCH,
        Source.ACTION,
    ]


def test_cached_etag_saves_the_fetch() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.ACCEPTED, version=4)
    ledger.cache(WR, Status.ACCEPTED, "4")
    assert applier(ledger, gateway).apply(make(ActionKind.COMPLETE)).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    assert (gateway.fetches, gateway.updates) == (0, 1)


def test_stale_cache_costs_a_412_then_a_fetch() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.ACCEPTED, version=6)
    ledger.cache(WR, Status.ACCEPTED, "4")
    assert applier(ledger, gateway).apply(make(ActionKind.COMPLETE)).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    assert ledger.kinds() == ["intent", "conflict", "intent", "transition"]
    assert (gateway.fetches, gateway.updates) == (1, 2)


def test_cache_never_decides_that_nothing_is_to_be_sent() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.PENDING, version=2)
    ledger.cache(WR, Status.ACCEPTED, "1")  # stale: says already accepted
    assert applier(ledger, gateway).apply(make()).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    assert gateway.fetches == 1


def test_412s_are_retried_immediately_then_fall_back_to_a_delayed_retry() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(interference=2)
    assert applier(ledger, gateway).apply(make()).outcome is Outcome.APPLIED  # type: ignore[union-attr]
    assert ledger.kinds() == ["observed", *["intent", "conflict"] * 2, "intent", "transition"]

    ledger, gateway = FakeLedgerWriter(), FakeGateway(interference=10)
    result = applier(ledger, gateway, immediate_conflict_tries=3).apply(make())
    assert isinstance(result, RetryLater)
    assert ledger.kinds() == ["observed"] + ["intent", "conflict"] * 4
    assert ledger.outcomes == {}


def test_already_in_target_state_sends_nothing() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.ACCEPTED)
    action = make()
    assert applier(ledger, gateway).apply(action).outcome is Outcome.ALREADY_APPLIED  # type: ignore[union-attr]
    assert gateway.updates == 0
    assert ledger.outcomes == {action.action_id: Outcome.ALREADY_APPLIED}


def test_impossible_transition_sends_nothing() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.TIMEOUT)
    assert applier(ledger, gateway).apply(make()).outcome is Outcome.INVALID_TRANSITION  # type: ignore[union-attr]
    assert gateway.updates == 0


def test_a_settled_action_is_not_applied_again() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    action = make()
    applier(ledger, gateway).apply(action)
    again = applier(ledger, gateway).apply(action)
    assert isinstance(again, Done)
    assert again.outcome is Outcome.APPLIED
    assert gateway.updates == 1


def test_throttling_retries_later_honouring_retry_after() -> None:
    ledger = FakeLedgerWriter()
    gateway = FakeGateway(failures=[Throttled("HTTP 429", 429, 20429, "RQ", retry_after=9.0)])
    result = applier(ledger, gateway, base_delay=0.5).apply(make())
    assert isinstance(result, RetryLater)
    assert result.delay == 9.0
    assert ledger.kinds() == ["observed", "intent", "attempt"]
    # The next run fetches first: the update may have landed.
    done = applier(ledger, gateway).apply(make(), Delivery(retries=1))
    assert isinstance(done, Done)


def test_exhausted_retries_dead_letter_the_action() -> None:
    ledger = FakeLedgerWriter()
    gateway = FakeGateway(failures=[TransientTaskRouterError("HTTP 503", 503, 20503)])
    action = make()
    result = applier(ledger, gateway, max_delayed_retries=2).apply(action, Delivery(retries=2))
    assert isinstance(result, Done)
    assert result.outcome is Outcome.DEAD_LETTERED
    assert ledger.outcomes[action.action_id] is Outcome.DEAD_LETTERED


def test_404_fails_without_retry() -> None:
    ledger = FakeLedgerWriter()
    gateway = FakeGateway(failures=[PermanentTaskRouterError("HTTP 404", 404, 20404)])
    assert applier(ledger, gateway).apply(make()).outcome is Outcome.FAILED  # type: ignore[union-attr]
    assert gateway.updates == 1


def test_400_after_the_target_was_reached_is_already_applied() -> None:
    # Our earlier update timed out but landed; TaskRouter now refuses the repeat with a 400.
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    gateway.failures.append(PermanentTaskRouterError("HTTP 400: already accepted", 400, 20001))
    original_update = gateway.update

    def landed_then_refused(*args: Any, **kwargs: Any) -> Any:
        gateway.status = Status.ACCEPTED
        return original_update(*args, **kwargs)

    gateway.update = landed_then_refused  # type: ignore[method-assign]
    assert applier(ledger, gateway).apply(make()).outcome is Outcome.ALREADY_APPLIED  # type: ignore[union-attr]


def test_not_yet_possible_waits_then_expires() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.PENDING)
    action = make(ActionKind.COMPLETE, not_after=NOW + timedelta(minutes=1))
    result = applier(ledger, gateway).apply(action)
    assert isinstance(result, RetryLater)
    assert gateway.updates == 0
    later = ActionApplier(ledger, gateway, clock=lambda: NOW + timedelta(minutes=2), sleep=lambda _: None)
    assert later.apply(action, Delivery(retries=1)) == Done(
        Outcome.EXPIRED,
        f"past not_after {action.not_after.isoformat()}",  # type: ignore[union-attr]
    )


def test_a_change_made_outside_the_workers_is_recorded_as_observed() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.TIMEOUT, version=3)
    ledger.cache(WR, Status.PENDING, "1")
    action = make()
    assert applier(ledger, gateway).apply(action).outcome is Outcome.INVALID_TRANSITION  # type: ignore[union-attr]
    observed = [moved(row) for row in ledger.rows if isinstance(row, Transition) and row.action_id is None]
    assert observed == [("pending", "timeout", "1", "3", None)]
    assert ledger.projection[WR].status == "timeout"


def test_conflict_rows_carry_what_the_refetch_found() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(interference=1)
    applier(ledger, gateway).apply(make())
    conflict = next(row for row in ledger.rows if isinstance(row, Conflict))
    assert conflict.etag_before == "0"
    assert conflict.etag_after == "1"
    assert conflict.to_status == "pending"
    assert conflict.twilio_error_code == 20412


def test_a_redelivered_message_fetches_instead_of_trusting_the_cache() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(status=Status.ACCEPTED, version=5)
    ledger.cache(WR, Status.PENDING, "4")  # our crashed run's update landed; the cache is behind
    result = applier(ledger, gateway).apply(make(), Delivery(redelivered=True))
    assert result == Done(Outcome.ALREADY_APPLIED, "reservation is already accepted")
    assert (gateway.fetches, gateway.updates) == (1, 0)
    assert ledger.kinds() == ["observed", "outcome"]


def test_a_412_is_recorded_even_when_the_refetch_fails() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(interference=1)
    real_fetch = gateway.fetch
    fetches = 0

    def fetch_then_fail(ref: Any) -> Any:
        nonlocal fetches
        fetches += 1
        if fetches > 1:
            raise TransientTaskRouterError("connection dropped")
        return real_fetch(ref)

    gateway.fetch = fetch_then_fail  # type: ignore[method-assign]
    result = applier(ledger, gateway).apply(make())
    assert isinstance(result, RetryLater)
    conflict = next(row for row in ledger.rows if isinstance(row, Conflict))
    assert conflict.etag_before == "0"
    assert conflict.etag_after is None


def test_the_applier_does_not_import_the_database_driver() -> None:
    """It sees the ledger only through the writer port and the typed events."""
    code = "import sys, workers.apply.applier; sys.exit('psycopg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
