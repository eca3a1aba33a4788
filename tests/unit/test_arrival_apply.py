"""Plain JSON in one broker hop: the intake applies an accepted action in its own thread
(``ArrivalApply``) instead of publishing it again for the apply task, and still acknowledges
nothing without an outcome, dead-letters what keeps its message, hands a run to try later to the
apply task with its countdown, and tells Flower about it as a run of the apply task."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.fakes import FakeGateway, FakeLedgerWriter
from workers.apply import task
from workers.apply.applier import ActionApplier
from workers.broker import intake as step
from workers.broker.intake import Intake
from workers.broker.topology import APPLY_TASK_NAME
from workers.core.action import Action, ActionKind
from workers.core.retry import RetryPolicy
from workers.core.validation import Accepted, validate_message
from workers.errors import PermanentTaskRouterError, TaskRouterError, Throttled

WS, WT, WR = "WS" + "1" * 32, "WT" + "2" * 32, "WR" + "3" * 32


@dataclass
class FakeMessage:
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    delivery_info: dict[str, Any] = field(default_factory=dict)
    acks: int = 0
    requeues: int = 0

    def ack(self) -> None:
        self.acks += 1

    def requeue(self) -> None:
        self.requeues += 1


def refusing(error: TaskRouterError) -> FakeGateway:
    """TaskRouter answers the next update with ``error``."""
    return FakeGateway(failures=[error])


class Published:
    """What ArrivalApply would publish: hand-overs to the apply task and dead letters."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.handed: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.dead: list[dict[str, Any]] = []
        self.fail = False
        monkeypatch.setattr(task, "hand_to_apply", self._hand)
        monkeypatch.setattr(task, "publish_dead_letter", self._dead)
        monkeypatch.setattr(step, "hand_to_apply", self._hand)

    def _hand(self, publishers: Any, message: dict[str, Any], **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.handed.append((message, options))

    def _dead(self, publishers: Any, kept: Any, reason: str, **options: Any) -> None:
        if self.fail:
            raise ConnectionError("broker gone")
        self.dead.append(options)


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    return Published(monkeypatch)


def accepted(gateway: FakeGateway) -> Accepted:
    fate = validate_message(Action(uuid.uuid4(), ActionKind.ACCEPT, WS, WR, task_sid=WT).to_message())
    assert isinstance(fate, Accepted)
    return fate


def arrival_apply(gateway: FakeGateway, ledger: FakeLedgerWriter) -> task.ArrivalApply:
    applier = ActionApplier(ledger, gateway, RetryPolicy(), rng=random.Random(1), sleep=lambda _: None)
    return task.ArrivalApply(lambda: applier, publishers=None, keys=None)  # type: ignore[arg-type]


def test_an_accepted_action_is_applied_where_it_is_and_nothing_is_published(published: Published) -> None:
    gateway, ledger = FakeGateway(), FakeLedgerWriter()
    fate = accepted(gateway)
    assert arrival_apply(gateway, ledger).apply(fate, redelivered=False) == "applied"
    assert ledger.kinds()[-2:] == ["intent", "transition"]  # write-ahead, then the applied transition
    assert (published.handed, published.dead) == ([], [])


def test_a_run_to_try_later_goes_to_the_apply_task_with_its_countdown_as_its_second_run(
    published: Published,
) -> None:
    gateway = refusing(Throttled("slow down", 429, 20429, None, retry_after=3.0))
    fate = accepted(gateway)
    assert arrival_apply(gateway, FakeLedgerWriter()).apply(fate, redelivered=False) is None
    [(message, options)] = published.handed
    assert message == fate.message
    assert options["retries"] == 1  # the task's next run fetches first and counts on from there
    assert options["countdown"] >= 3


def test_a_failed_action_keeps_its_message_in_the_dead_letter_queue_once(published: Published) -> None:
    gateway, ledger = refusing(PermanentTaskRouterError("gone", 404, 20404, None)), FakeLedgerWriter()
    fate = accepted(gateway)
    applying = arrival_apply(gateway, ledger)
    assert applying.apply(fate, redelivered=False) == "failed"
    assert len(published.dead) == 1
    # A producer's copy finds it settled, and its dead letter sent; a redelivery (the worker died
    # before the acknowledgement) may not have sent it: it sends it again.
    assert applying.apply(fate, redelivered=False) == "failed"
    assert len(published.dead) == 1
    assert applying.apply(fate, redelivered=True) == "failed"
    assert len(published.dead) == 2


class Dispatcher:
    """Celery's event dispatcher as the intake sees it: on, off, or without the task group."""

    def __init__(self, enabled: bool, groups: set[str] | None) -> None:
        self.enabled = enabled
        self.groups = groups
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, kind: str, **fields: Any) -> None:
        self.sent.append((kind, fields))


def intake_applying(
    gateway: FakeGateway, dispatcher: Dispatcher | None, loop: list[Any]
) -> tuple[Intake, FakeLedgerWriter]:
    ledger = FakeLedgerWriter()

    def no_ledger() -> Any:
        raise AssertionError("an applying intake records through the applier's ledger")

    intake = Intake(
        no_ledger,
        None,  # type: ignore[arg-type]
        on_loop=loop.append,
        applying=arrival_apply(gateway, ledger),
        events=lambda: dispatcher,
    )
    return intake, ledger


def run_loop(loop: list[Any]) -> None:
    while loop:
        loop.pop(0)()


def test_the_intake_acknowledges_an_applied_action_and_flower_sees_a_run_of_the_apply_task(
    published: Published,
) -> None:
    gateway, dispatcher, loop = FakeGateway(), Dispatcher(True, {"worker", "task"}), list[Any]()
    intake, ledger = intake_applying(gateway, dispatcher, loop)
    fate = accepted(gateway)
    raw = FakeMessage(json.dumps(fate.message).encode())
    intake.on_message(raw)  # type: ignore[arg-type]
    assert raw.acks == 0  # the loop's thread acknowledges and sends, not this one
    assert dispatcher.sent == []
    run_loop(loop)
    assert (raw.acks, raw.requeues, published.handed) == (1, 0, [])
    assert ledger.kinds()[-2:] == ["intent", "transition"]
    assert [kind for kind, _ in dispatcher.sent] == ["task-received", "task-started", "task-succeeded"]
    received, succeeded = dispatcher.sent[0][1], dispatcher.sent[2][1]
    assert received["uuid"] == str(fate.action.action_id)
    assert received["name"] == APPLY_TASK_NAME
    assert succeeded["result"] == "'applied'"


@pytest.mark.parametrize("dispatcher", [None, Dispatcher(False, None), Dispatcher(True, {"worker"})])
def test_no_task_event_is_sent_while_nobody_watches(
    published: Published, dispatcher: Dispatcher | None
) -> None:
    gateway, loop = FakeGateway(), list[Any]()
    intake, _ = intake_applying(gateway, dispatcher, loop)
    raw = FakeMessage(json.dumps(accepted(gateway).message).encode())
    intake.on_message(raw)  # type: ignore[arg-type]
    run_loop(loop)
    assert raw.acks == 1
    assert dispatcher is None or dispatcher.sent == []


def test_an_unconfirmed_dead_letter_leaves_the_message_unacknowledged(published: Published) -> None:
    gateway, loop = refusing(PermanentTaskRouterError("gone", 404, 20404, None)), list[Any]()
    intake, ledger = intake_applying(gateway, None, loop)
    published.fail = True
    raw = FakeMessage(json.dumps(accepted(gateway).message).encode())
    intake.on_message(raw)  # type: ignore[arg-type]
    run_loop(loop)
    assert (raw.acks, raw.requeues) == (0, 1)
    assert "outcome" in ledger.kinds()  # settled: the redelivery dead-letters it (redelivered)
