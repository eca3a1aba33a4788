"""Exactly once when answers are lost: every update is preceded by an intent in the ledger, and a
run that finds an intent with no answer after it resolves it from the reservation's ETag instead
of sending blindly (ops/LEDGER.md, "Lost answers"). Before, a call without call_accept whose
answer was lost was sent again: a second phone call to the agent."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fakes import NOW as FAKE_NOW
from tests.fakes import FakeGateway, FakeLedgerWriter
from workers.apply.applier import ActionApplier, Delivery, Done, RetryLater
from workers.core.action import Action, ActionKind
from workers.core.planner import Confirmed, Outcome, Resend, Undecidable, resolve_lost_answer
from workers.core.retry import RetryPolicy
from workers.core.state_machine import Status
from workers.errors import LedgerUnavailable
from workers.ledger.events import Intent, Transition
from workers.ledger.models import Source

WS, WT, WR = "WS" + "1" * 32, "WT" + "2" * 32, "WR" + "3" * 32
CALL = {"call_from": "+15550100001", "call_url": "https://example.test/twiml"}


def make(kind: ActionKind = ActionKind.ACCEPT, **fields: Any) -> Action:
    return Action(uuid.uuid4(), kind, WS, WR, task_sid=WT, **fields)


def applier(ledger: FakeLedgerWriter, gateway: FakeGateway) -> ActionApplier:
    return ActionApplier(
        ledger,
        gateway,
        RetryPolicy(),
        rng=random.Random(5),
        clock=lambda: datetime(2026, 11, 30, tzinfo=UTC),
        sleep=lambda _: None,
    )


def two_runs(action: Action, gateway: FakeGateway) -> tuple[FakeLedgerWriter, Any, Any]:
    """Run 1 loses the answer; run 2 is the retry (fetch first, as after any failure)."""
    ledger = FakeLedgerWriter()
    first = applier(ledger, gateway).apply(action, Delivery(retries=0))
    second = applier(ledger, gateway).apply(action, Delivery(retries=1))
    return ledger, first, second


def test_every_update_is_preceded_by_its_intent() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    assert applier(ledger, gateway).apply(make()) == Done(Outcome.APPLIED, "applied")
    assert ledger.kinds() == ["observed", "intent", "transition"]
    intent = ledger.rows[1]
    assert isinstance(intent, Intent)
    assert (intent.etag_before, intent.from_status, intent.to_status) == ("0", "pending", "accepted")
    assert not ledger.intents  # the transition answered it


def test_a_lost_answer_to_an_accept_that_landed_is_confirmed_not_sent_again() -> None:
    gateway = FakeGateway(lost_answers=1)
    ledger, first, second = two_runs(make(), gateway)
    assert isinstance(first, RetryLater)
    assert isinstance(second, Done)
    assert second.outcome is Outcome.APPLIED
    assert "confirmed after a lost answer" in second.reason
    assert gateway.updates == 1
    ours = [e for e in ledger.rows if isinstance(e, Transition) and e.action_id is not None]
    assert len(ours) == 1  # linked to the action, not "changed outside this run"
    assert (ours[0].from_status, ours[0].to_status, ours[0].outcome) == (
        "pending",
        "accepted",
        Outcome.APPLIED,
    )
    assert "observed" not in ledger.kinds()[1:]
    assert ours[0].source is Source.FETCH  # learnt on the fetch that confirmed it, not from an answer


def test_a_lost_answer_to_a_call_without_accept_is_indeterminate_and_never_sent_twice() -> None:
    gateway = FakeGateway(lost_answers=1)
    _, first, second = two_runs(make(ActionKind.CALL, params=CALL), gateway)
    assert isinstance(first, RetryLater)
    assert isinstance(second, Done)
    assert second.outcome is Outcome.INDETERMINATE
    assert second.keeps_message  # to reservations.dead, with the evidence, for an operator
    assert "If-Match 0" in second.reason
    assert "now ETag 1" in second.reason
    assert gateway.updates == 1  # the agent gets one call


def test_an_answer_lost_before_the_update_landed_is_sent_again_with_the_same_if_match() -> None:
    gateway = FakeGateway(failures=[_dropped()])
    ledger, first, second = two_runs(make(ActionKind.CALL, params=CALL), gateway)
    assert isinstance(first, RetryLater)
    assert second == Done(Outcome.APPLIED, "applied")
    assert gateway.updates == 2
    intents = [e for e in ledger.rows if isinstance(e, Intent)]
    assert [i.etag_before for i in intents] == ["0", "0"]


def test_a_status_race_after_a_lost_answer_is_indeterminate_when_either_could_have_moved_it() -> None:
    gateway = FakeGateway(lost_answers=1)
    ledger = FakeLedgerWriter()
    action = make(ActionKind.ACCEPT)
    assert isinstance(applier(ledger, gateway).apply(action), RetryLater)
    gateway.status, gateway.version = Status.WRAPPING, gateway.version + 1  # our accept, then on?
    result = applier(ledger, gateway).apply(action, Delivery(retries=1))
    assert isinstance(result, Done)
    assert result.outcome is Outcome.INDETERMINATE
    assert gateway.updates == 1


def test_a_status_our_action_cannot_lead_to_proves_it_did_not_land() -> None:
    gateway = FakeGateway(failures=[_dropped()])
    ledger = FakeLedgerWriter()
    action = make(ActionKind.ACCEPT)
    assert isinstance(applier(ledger, gateway).apply(action), RetryLater)
    gateway.status, gateway.version = Status.TIMEOUT, gateway.version + 1  # no path from accepted
    result = applier(ledger, gateway).apply(action, Delivery(retries=1))
    assert isinstance(result, Done)
    assert result.outcome is Outcome.INVALID_TRANSITION  # planned again: a timed-out reservation
    assert gateway.updates == 1


def test_a_412_or_a_4xx_answers_the_intent() -> None:
    ledger, gateway = FakeLedgerWriter(), FakeGateway(interference=1)
    assert applier(ledger, gateway).apply(make()) == Done(Outcome.APPLIED, "applied")
    assert ledger.kinds().count("intent") == 2  # one per update sent
    assert not ledger.intents


@pytest.mark.parametrize(
    ("kind", "params", "sent_from", "current", "moved", "expected"),
    [
        (ActionKind.ACCEPT, None, Status.PENDING, Status.PENDING, False, Resend),
        (ActionKind.ACCEPT, None, Status.PENDING, Status.ACCEPTED, True, Confirmed),
        (ActionKind.ACCEPT, None, Status.PENDING, Status.PENDING, True, Resend),  # someone else's edit
        (ActionKind.ACCEPT, None, Status.PENDING, Status.TIMEOUT, True, Resend),  # unreachable from accepted
        (ActionKind.ACCEPT, None, Status.PENDING, Status.WRAPPING, True, Undecidable),  # ours, then on?
        (ActionKind.CALL, CALL, Status.PENDING, Status.PENDING, True, Undecidable),
        (ActionKind.CALL, CALL, Status.PENDING, Status.PENDING, False, Resend),
        (ActionKind.CALL, {**CALL, "call_accept": True}, Status.PENDING, Status.ACCEPTED, True, Confirmed),
        (ActionKind.COMPLETE, None, Status.ACCEPTED, Status.WRAPPING, True, Resend),
    ],
)
def test_the_decision_table(
    kind: ActionKind,
    params: dict[str, Any] | None,
    sent_from: Status,
    current: Status,
    moved: bool,
    expected: type,
) -> None:
    action = make(kind, params=params or {})
    resolution = resolve_lost_answer(
        action, sent_etag="7", sent_from=sent_from, current_etag="8" if moved else "7", current=current
    )
    assert isinstance(resolution, expected)


def _dropped() -> Any:
    from workers.errors import TransientTaskRouterError

    return TransientTaskRouterError("the connection dropped before the request was sent")


def test_an_answer_whose_ledger_connection_died_is_recorded_on_a_fresh_one() -> None:
    """A cut database connection after TaskRouter answered: the answer is in hand, so it is
    recorded through the pool instead of leaving the intent to be resolved blind."""

    class CutOnce(FakeLedgerWriter):
        cut = True

        def append(self, event: Any) -> Any:
            if isinstance(event, Transition) and event.action_id is not None and self.cut:
                self.cut = False
                raise LedgerUnavailable("server closed the connection unexpectedly")
            return super().append(event)

    ledger, gateway = CutOnce(), FakeGateway()
    action = make(ActionKind.CALL, params=CALL)
    assert applier(ledger, gateway).apply(action) == Done(Outcome.APPLIED, "applied")
    assert gateway.updates == 1
    assert not ledger.intents
    assert ledger.outcomes[action.action_id] is Outcome.APPLIED


def test_a_lost_answer_younger_than_an_update_can_take_is_not_resolved_yet() -> None:
    """Run A's connection (and its lock) died while its call was in flight; run B finds A's intent
    at once. Resending with that ETag would race A's call: if A's lands first, B's 412 looks like
    anyone's change and B would call again. So B waits until A's update cannot land any more."""
    ledger = FakeLedgerWriter()
    action = make(ActionKind.CALL, params=CALL)
    ledger.receive(action)
    ledger.append(Intent(action.action_id, 1, "0", "pending", None, action.update_arguments()))
    gateway = FakeGateway()

    def at(seconds: float) -> ActionApplier:
        return ActionApplier(
            ledger, gateway, RetryPolicy(), clock=lambda: FAKE_NOW + timedelta(seconds=seconds)
        )

    early = at(1).apply(action, Delivery(retries=1))
    assert isinstance(early, RetryLater)
    assert early.delay == pytest.approx(24)
    assert (gateway.fetches, gateway.updates) == (0, 0)
    gateway.version += 1  # A's call lands meanwhile
    later = at(30).apply(action, Delivery(retries=2))
    assert isinstance(later, Done)
    assert later.outcome is Outcome.INDETERMINATE
    assert gateway.updates == 0  # B never called
