"""The pure planner (step 2 of the If-Match protocol) and the retry policy."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workers.core.action import Action, ActionKind
from workers.core.planner import Finish, Outcome, Send, Wait, plan, target_status
from workers.core.retry import RetryPolicy
from workers.core.state_machine import Status

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
WS, WT, WR = "WS" + "1" * 32, "WT" + "2" * 32, "WR" + "3" * 32


def make(kind: ActionKind, **fields: Any) -> Action:
    return Action(uuid.uuid4(), kind, WS, WR, task_sid=WT, **fields)


@pytest.mark.parametrize(
    ("kind", "current", "argument"),
    [
        (ActionKind.ACCEPT, Status.PENDING, ("reservation_status", "accepted")),
        (ActionKind.REJECT, Status.PENDING, ("reservation_status", "rejected")),
        (ActionKind.WRAPUP, Status.ACCEPTED, ("reservation_status", "wrapping")),
        (ActionKind.COMPLETE, Status.ACCEPTED, ("reservation_status", "completed")),
        (ActionKind.COMPLETE, Status.WRAPPING, ("reservation_status", "completed")),
        (ActionKind.CONFERENCE, Status.PENDING, ("instruction", "conference")),
    ],
)
def test_sendable_actions(kind: ActionKind, current: Status, argument: tuple[str, str]) -> None:
    decision = plan(make(kind), current, NOW)
    assert isinstance(decision, Send)
    key, value = argument
    assert decision.arguments[key] == value


@pytest.mark.parametrize(
    ("kind", "current"),
    [
        (ActionKind.ACCEPT, Status.ACCEPTED),
        (ActionKind.REJECT, Status.REJECTED),
        (ActionKind.COMPLETE, Status.COMPLETED),
        (ActionKind.CONFERENCE, Status.ACCEPTED),
    ],
)
def test_already_in_target_state_sends_nothing(kind: ActionKind, current: Status) -> None:
    assert plan(make(kind), current, NOW) == Finish(
        Outcome.ALREADY_APPLIED, f"reservation is already {current}"
    )


@pytest.mark.parametrize(
    ("kind", "current"),
    [
        (ActionKind.ACCEPT, Status.TIMEOUT),
        (ActionKind.ACCEPT, Status.RESCINDED),
        (ActionKind.REJECT, Status.ACCEPTED),
        (ActionKind.WRAPUP, Status.COMPLETED),
        (ActionKind.CONFERENCE, Status.CANCELED),
    ],
)
def test_impossible_actions_are_invalid_transitions(kind: ActionKind, current: Status) -> None:
    decision = plan(make(kind), current, NOW)
    assert isinstance(decision, Finish)
    assert decision.outcome is Outcome.INVALID_TRANSITION


@pytest.mark.parametrize("kind", [ActionKind.COMPLETE, ActionKind.WRAPUP])
def test_not_yet_possible_waits(kind: ActionKind) -> None:
    assert isinstance(plan(make(kind), Status.PENDING, NOW), Wait)


def test_call_without_accept_changes_no_status_and_is_sent_from_pending() -> None:
    action = make(ActionKind.CALL, params={"call_from": "+15550001111", "call_url": "https://x.test/twiml"})
    assert target_status(action) is None
    decision = plan(action, Status.PENDING, NOW)
    assert isinstance(decision, Send)
    assert decision.target is None


def test_call_with_accept_targets_accepted() -> None:
    action = make(
        ActionKind.CALL,
        params={"call_from": "+15550001111", "call_url": "https://x.test/twiml", "call_accept": True},
    )
    assert target_status(action) is Status.ACCEPTED


def test_raw_update_uses_its_reservation_status() -> None:
    action = make(
        ActionKind.UPDATE, params={"reservation_status": "rejected", "worker_activity_sid": "WA" + "4" * 32}
    )
    decision = plan(action, Status.PENDING, NOW)
    assert isinstance(decision, Send)
    assert decision.target is Status.REJECTED
    assert decision.arguments["worker_activity_sid"] == "WA" + "4" * 32


def test_expired_after_not_after_but_already_applied_wins() -> None:
    action = make(ActionKind.ACCEPT, not_after=NOW - timedelta(seconds=1))
    decision = plan(action, Status.PENDING, NOW)
    assert isinstance(decision, Finish)
    assert decision.outcome is Outcome.EXPIRED
    assert plan(action, Status.ACCEPTED, NOW).outcome is Outcome.ALREADY_APPLIED  # type: ignore[union-attr]


def test_expected_status_mismatch_is_invalid() -> None:
    action = make(ActionKind.COMPLETE, expected_status=Status.WRAPPING)
    decision = plan(action, Status.ACCEPTED, NOW)
    assert isinstance(decision, Finish)
    assert decision.outcome is Outcome.INVALID_TRANSITION
    assert isinstance(plan(action, Status.WRAPPING, NOW), Send)


def test_conflict_pauses_are_bounded_jittered_then_fall_back() -> None:
    policy = RetryPolicy(immediate_conflict_tries=3, immediate_conflict_pause=0.01)
    rng = random.Random(7)
    pauses = [policy.conflict_pause(n, rng) for n in range(4)]
    assert pauses[3] is None
    for n, pause in enumerate(pauses[:3]):
        assert pause is not None
        assert 0 <= pause <= 0.01 * 2**n


def test_delays_grow_are_capped_honour_retry_after_and_run_out() -> None:
    policy = RetryPolicy(max_delayed_retries=10, base_delay=1.0, max_delay=30.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(10)]
    assert all(d is not None for d in delays)
    for n, d in enumerate(delays):
        ceiling = min(30.0, 2.0**n)
        assert d is not None
        assert ceiling / 2 <= d <= ceiling
    assert policy.delay(0, rng, retry_after=7.0) == 7.0
    assert policy.delay(0, rng, retry_after=999.0) == 30.0
    assert policy.delay(10, rng) is None


def test_policy_refuses_delays_that_would_trip_consumer_timeout() -> None:
    with pytest.raises(ValueError, match="consumer_timeout"):
        RetryPolicy(max_delay=3600)


def test_action_round_trips_through_its_wire_form() -> None:
    action = make(
        ActionKind.CALL,
        params={"call_from": "+15550001111", "call_url": "https://x.test/twiml", "call_accept": True},
        expected_status=Status.PENDING,
        not_after=NOW,
        correlation_id="corr-1",
        producer="routing-svc",
    )
    message = action.to_message()
    assert message["schema"] == "reservation-action/v1"
    assert message["not_after"] == "2026-11-22T12:00:00+00:00"
    assert Action.from_message(message) == action
    assert Action.from_message({**message, "not_after": "2026-11-22T12:00:00Z"}) == action


@pytest.mark.parametrize(
    "change",
    [
        {"schema": "reservation-action/v2"},
        {"action": "explode"},
        {"action_id": "not-a-uuid"},
        {"not_after": "2026-11-22T12:00:00"},
        {"params": {"nonsense": 1}},
        {"task_sid": None},
    ],
)
def test_structurally_bad_messages_raise_value_error(change: dict[str, Any]) -> None:
    message = {**make(ActionKind.ACCEPT).to_message(), **change}
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError subclass is the contract
        Action.from_message(message)
