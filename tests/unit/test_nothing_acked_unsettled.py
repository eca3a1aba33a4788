"""Every exception a run can raise ends in a delayed retry (within the policy's bound) or in an
outcome; a missing privilege stops the worker instead of eating messages; a retry that cannot be
published hands the message back. Before, Celery acknowledged any message whose task raised."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery.exceptions import Reject, SoftTimeLimitExceeded

from tests.fakes import FakeGateway, FakeLedgerWriter
from workers.apply import task
from workers.apply.applier import ActionApplier, Delivery, Done, RetryLater
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.retry import RetryPolicy
from workers.errors import LedgerPermissionDenied, LedgerUnavailable

WS, WT, WR = "WS" + "1" * 32, "WT" + "2" * 32, "WR" + "3" * 32


def message() -> dict[str, Any]:
    return Action(uuid.uuid4(), ActionKind.ACCEPT, WS, WR, task_sid=WT).to_message()


class Failing(FakeGateway):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def fetch(self, ref: Any) -> Any:
        raise self.error


def applier(gateway: FakeGateway, ledger: FakeLedgerWriter | None = None) -> ActionApplier:
    policy = RetryPolicy(max_delayed_retries=2)
    return ActionApplier(
        ledger or FakeLedgerWriter(), gateway, policy, rng=random.Random(1), sleep=lambda _: None
    )


@pytest.mark.parametrize(
    "error",
    [
        SoftTimeLimitExceeded(),  # prefork's soft time limit
        ValueError("'bogus' is not a valid Status"),  # an unknown status from TaskRouter
        KeyError("status"),  # a 200 whose body is not what the API documents
        RuntimeError("a bug of ours"),
    ],
    ids=["soft-time-limit", "unknown-status", "odd-body", "bug"],
)
def test_an_unexpected_error_is_retried_within_the_bound_then_dead_lettered(error: Exception) -> None:
    first = applier(Failing(error)).apply_message(message(), Delivery(retries=0))
    assert isinstance(first, RetryLater)
    assert type(error).__name__ in first.reason
    last = applier(Failing(error)).apply_message(message(), Delivery(retries=2))
    assert isinstance(last, Done)
    assert last.outcome is Outcome.DEAD_LETTERED
    assert last.keeps_message  # its message goes to reservations.dead, for redrive


def test_a_failing_ledger_is_retried_and_a_missing_privilege_is_raised() -> None:
    class Down(FakeLedgerWriter):
        def receive(self, action: Action, trace_id: str | None = None) -> Any:
            raise LedgerUnavailable("connection refused")

    class Refused(FakeLedgerWriter):
        def receive(self, action: Action, trace_id: str | None = None) -> Any:
            raise LedgerPermissionDenied("permission denied for function record_received")

    assert isinstance(applier(FakeGateway(), Down()).apply_message(message()), RetryLater)
    with pytest.raises(LedgerPermissionDenied):
        applier(FakeGateway(), Refused()).apply_message(message())


def test_a_malformed_message_settles_as_rejected_input_with_a_ledger_row() -> None:
    ledger = FakeLedgerWriter()
    result = applier(FakeGateway(), ledger).apply_message({"action": "dance"})
    assert isinstance(result, Done)
    assert result.outcome is Outcome.REJECTED_INPUT
    assert result.keeps_message
    assert [type(event).__name__ for event in ledger.rows] == ["RejectedInput"]


@pytest.mark.parametrize(
    "change",
    [
        {"SipAuthPassword": "pw"},  # an unknown field: Action.from_message alone would accept it
        {"params": {"to": "+15550100001"}},  # a parameter that belongs to another action
        {"schema": "reservation-action/v2"},
        {"not_after": "tomorrow"},
    ],
)
def test_a_message_that_skipped_the_intake_is_checked_against_the_schema(change: dict[str, Any]) -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    result = applier(gateway, ledger).apply_message({**message(), **change})
    assert isinstance(result, Done)
    assert result.outcome is Outcome.REJECTED_INPUT
    assert result.keeps_message
    assert [type(event).__name__ for event in ledger.rows] == ["RejectedInput"]
    assert (gateway.fetches, gateway.updates) == (0, 0)


class _Publishers:
    @contextmanager
    def confirmed(self) -> Iterator[object]:
        yield object()


class _Task:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def retry(self, **options: Any) -> Any:
        raise self.error


def test_a_retry_that_cannot_be_published_hands_the_message_back() -> None:
    # Celery's Task.retry raises Reject(requeue=False) when the retry's publish fails.
    unpublished = Reject(ConnectionError("broker gone"), requeue=False)
    with pytest.raises(Reject) as raised:
        task._retry(_Task(unpublished), _Publishers(), message(), 1.0)  # type: ignore[arg-type]
    assert raised.value.requeue is True


def test_a_retry_whose_producer_cannot_be_had_hands_the_message_back() -> None:
    class NoProducer:
        @contextmanager
        def confirmed(self) -> Iterator[object]:
            raise ConnectionRefusedError("no broker")
            yield  # pragma: no cover

    with pytest.raises(Reject) as raised:
        task._retry(_Task(RuntimeError("unused")), NoProducer(), message(), 1.0)  # type: ignore[arg-type]
    assert raised.value.requeue is True
