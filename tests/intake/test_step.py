"""The intake's handler with fakes of its seams (ledger, apply hand-off, dead-letter publish): one
fate per message, acknowledged only once recorded and forwarded, requeued when either fails."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.intake.messages import example, fresh, mutated_messages, valid_messages
from workers.broker import intake as step
from workers.broker.intake import Intake
from workers.broker.publishing import Publishers, hand_to_apply
from workers.broker.sealing import BODY_HEADER
from workers.broker.topology import DELIVERY_LIMIT, OUTCOME_HEADER, REJECT_CODE_HEADER
from workers.composition import create_app
from workers.config import Settings
from workers.core.action import Action
from workers.errors import LedgerPermissionDenied, LedgerUnavailable
from workers.ledger.events import RejectedInput
from workers.ledger.models import Arrival

REAL_PAUSE = step.Intake._pause


@dataclass
class FakeMessage:
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    acks: int = 0
    requeues: int = 0

    def ack(self) -> None:
        self.acks += 1

    def requeue(self) -> None:
        self.requeues += 1


class FakeLedger:
    def __init__(self) -> None:
        self.received: list[Action] = []
        self.rejected: list[tuple[Mapping[str, Any] | None, str]] = []
        self.fail = False
        self.closed = False
        self.outcomes: dict[uuid.UUID, str] = {}

    def close(self) -> None:
        self.closed = True

    def receive(self, action: Action) -> Arrival:
        if self.fail:
            raise LedgerUnavailable("down")
        self.received.append(action)
        return Arrival(created=True, outcome=self.outcomes.get(action.action_id), reservation=None)

    def append(self, event: RejectedInput) -> int:
        if self.fail:
            raise LedgerUnavailable("down")
        self.rejected.append((event.message, event.detail))
        return len(self.rejected)


def _no_ledger() -> Any:
    raise AssertionError("the tests hand the intake a fake ledger")


# The harness replaces hand_to_apply and publish_dead_letter: nothing is published.
_NO_PUBLISHERS = cast(Publishers, None)


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ledger = FakeLedger()
        self.applied: list[dict[str, Any]] = []
        self.dead: list[tuple[Any, str, dict[str, Any]]] = []
        self.publish_fails = False
        self.apply_threads: list[int] = []
        self.intake = Intake(_no_ledger, _NO_PUBLISHERS)  # the fakes below publish nothing
        self.intake._ledger = self.ledger  # type: ignore[assignment]
        monkeypatch.setattr(step, "hand_to_apply", self._apply)
        monkeypatch.setattr(step, "publish_dead_letter", self._dead)
        monkeypatch.setattr(step.Intake, "_pause", lambda self, seconds: None)

    def _apply(self, app: Any, message: dict[str, Any]) -> None:
        if self.publish_fails:
            raise ConnectionError("broker gone")
        self.applied.append(message)
        self.apply_threads.append(threading.get_ident())

    def _dead(self, app: Any, body: Any, reason: str, **options: Any) -> None:
        if self.publish_fails:
            raise ConnectionError("broker gone")
        self.dead.append((body, reason, options))

    def fates(self) -> int:
        return len(self.applied) + len(self.dead)


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(monkeypatch)


def test_a_valid_message_is_recorded_then_handed_to_the_apply_task_then_acked(harness: Harness) -> None:
    message = fresh(example("dequeue"))
    raw = FakeMessage(json.dumps(message).encode())
    harness.intake.on_message(raw)  # type: ignore[arg-type]
    assert [str(a.action_id) for a in harness.ledger.received] == [message["action_id"]]
    assert harness.applied == [message]
    assert (raw.acks, raw.requeues, harness.dead) == (1, 0, [])


def test_a_copy_of_a_settled_action_is_acked_without_a_second_hand_off(harness: Harness) -> None:
    message = fresh(example("accept"))
    harness.ledger.outcomes[uuid.UUID(message["action_id"])] = "applied"
    raw = FakeMessage(json.dumps(message).encode())
    harness.intake.on_message(raw)  # type: ignore[arg-type]
    assert [str(a.action_id) for a in harness.ledger.received] == [message["action_id"]]
    assert (raw.acks, harness.applied, harness.dead) == (1, [], [])


def test_a_bad_message_is_recorded_and_dead_lettered_masked_then_acked(harness: Harness) -> None:
    raw = FakeMessage(
        b'{"schema": "reservation-action/v1", "action": "transfer"}', content_type="application/json"
    )
    harness.intake.on_message(raw)  # type: ignore[arg-type]
    ((body, reason, options),) = harness.dead
    assert body == {"schema": "reservation-action/v1", "action": "transfer"}  # masked: nothing to mask here
    assert reason.startswith("unknown_action: ")
    assert options["extra_headers"] == {
        OUTCOME_HEADER: "rejected_input",
        REJECT_CODE_HEADER: "unknown_action",
        BODY_HEADER: "masked",
    }
    assert harness.ledger.rejected == [({"schema": "reservation-action/v1", "action": "transfer"}, reason)]
    assert (raw.acks, raw.requeues, harness.applied) == (1, 0, [])


def test_an_undecodable_message_is_dead_lettered_too(harness: Harness) -> None:
    raw = FakeMessage(b"\x1f\x8b", content_type="application/json")
    harness.intake.on_decode_error(raw, ValueError("bad compression"))  # type: ignore[arg-type]
    assert harness.dead[0][1].startswith("content_encoding: ")
    assert harness.ledger.rejected[0][0] is None
    assert raw.acks == 1


@pytest.mark.parametrize("failing", ["ledger", "broker"])
@pytest.mark.parametrize("name", ["accept", "bad"])
def test_when_the_ledger_or_the_broker_fails_nothing_is_acked_and_the_message_is_requeued(
    harness: Harness, failing: str, name: str
) -> None:
    if failing == "ledger":
        harness.ledger.fail = True
    else:
        harness.publish_fails = True
    raw = FakeMessage(b"[]" if name == "bad" else json.dumps(fresh(example(name))).encode())
    harness.intake.on_message(raw)  # type: ignore[arg-type]  # must not raise
    assert (raw.acks, raw.requeues) == (0, 1)
    assert harness.fates() == 0
    # Once the fault is gone, the redelivery settles it.
    harness.ledger.fail = harness.publish_fails = False
    harness.intake.on_message(raw)  # type: ignore[arg-type]
    assert (raw.acks, harness.fates()) == (1, 1)


def test_a_failing_requeue_does_not_escape(harness: Harness) -> None:
    harness.ledger.fail = True

    class Broken(FakeMessage):
        def requeue(self) -> None:
            raise ConnectionError("channel closed")

    harness.intake.on_message(Broken(b"[]"))  # type: ignore[arg-type]


def test_the_pause_before_a_requeue_grows_with_the_delivery_count_and_is_capped(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(step.Intake, "_pause", lambda self, seconds: pauses.append(seconds))
    harness.ledger.fail = True
    for count in (0, 3, 10):
        harness.intake.on_message(FakeMessage(b"[]", headers={"x-delivery-count": count}))  # type: ignore[arg-type]
    assert pauses == [step.RETRY_PAUSE, step.RETRY_PAUSE * 8, step.MAX_RETRY_PAUSE]


def test_with_threads_the_loop_only_hands_over_and_gets_the_acknowledgement_back(harness: Harness) -> None:
    """The event loop must not wait on the ledger or a confirm, and only its thread may ack."""
    handed_back: queue.Queue[Callable[[], None]] = queue.Queue()
    intake = Intake(_no_ledger, _NO_PUBLISHERS, threads=2, on_loop=handed_back.put)
    intake._ledger = harness.ledger  # type: ignore[assignment]
    try:
        _check_the_hand_over(harness, intake, handed_back)
    finally:
        intake.close()
    assert harness.ledger.closed


def _check_the_hand_over(
    harness: Harness, intake: Intake, handed_back: queue.Queue[Callable[[], None]]
) -> None:
    good = FakeMessage(json.dumps(fresh(example("accept"))).encode())
    intake.on_message(good)  # type: ignore[arg-type]
    acknowledge = handed_back.get(timeout=10)
    (apply_thread,) = harness.apply_threads
    assert apply_thread != threading.get_ident()
    assert good.acks == 0  # the pool thread recorded and forwarded it, but did not ack it
    acknowledge()
    assert good.acks == 1

    harness.ledger.fail = True
    failing = FakeMessage(json.dumps(fresh(example("accept"))).encode())
    intake.on_message(failing)  # type: ignore[arg-type]
    requeue = handed_back.get(timeout=10)
    assert failing.requeues == 0
    requeue()
    assert (failing.acks, failing.requeues) == (0, 1)


def test_an_acknowledgement_on_a_closed_channel_does_not_escape_the_loop(harness: Harness) -> None:
    handed_back: list[Callable[[], None]] = []
    harness.intake = Intake(_no_ledger, _NO_PUBLISHERS, on_loop=handed_back.append)
    harness.intake._ledger = harness.ledger  # type: ignore[assignment]

    class ClosedChannel(FakeMessage):
        def ack(self) -> None:
            raise ConnectionError("channel closed")

    harness.intake.on_message(ClosedChannel(json.dumps(fresh(example("accept"))).encode()))  # type: ignore[arg-type]
    (acknowledge,) = handed_back
    acknowledge()  # logged; the broker redelivers the message and the ledger makes it idempotent


MESSAGES = st.one_of(
    valid_messages().map(lambda m: json.dumps(m).encode()),
    mutated_messages().map(lambda m: json.dumps(m).encode()),
    st.binary(max_size=200),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=MESSAGES, content_type=st.sampled_from(["application/json", "application/json", None, "text/plain"])
)
def test_every_message_has_exactly_one_fate(harness: Harness, raw: bytes, content_type: str | None) -> None:
    before_applied, before_dead = len(harness.applied), len(harness.dead)
    before_received, before_rejected = len(harness.ledger.received), len(harness.ledger.rejected)
    message = FakeMessage(raw, content_type=content_type)
    harness.intake.on_message(message)  # type: ignore[arg-type]
    applied = len(harness.applied) - before_applied
    dead = len(harness.dead) - before_dead
    assert applied + dead == 1
    assert len(harness.ledger.received) - before_received == applied
    assert len(harness.ledger.rejected) - before_rejected == dead
    assert (message.acks, message.requeues) == (1, 0)


def test_the_hand_off_to_the_apply_task_uses_the_action_id_and_masks_pii() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    app = create_app(Settings(broker_url="memory://"))

    def send_task(name: str, **options: Any) -> None:
        calls.append((name, options))

    app.send_task = send_task
    message = fresh(example("call"))
    hand_to_apply(app.runtime.publishers, message)
    ((name, options),) = calls
    assert options["producer"] is not None  # a producer of the confirmed pool, not the app's own
    assert name == "reservations.apply"
    assert options["task_id"] == message["action_id"]
    assert options["args"] == [message]
    assert options["delivery_mode"] == 2
    assert message["params"]["call_from"] not in options["argsrepr"]
    assert "[redacted]" in options["argsrepr"]


def test_closing_finishes_the_message_in_hand_acks_it_here_and_leaves_the_queued_ones_to_the_broker(
    harness: Harness,
) -> None:
    entered, release = threading.Event(), threading.Event()
    receive = harness.ledger.receive

    def slow_receive(action: Action) -> Arrival:
        entered.set()
        release.wait(10)
        return receive(action)

    harness.ledger.receive = slow_receive  # type: ignore[method-assign]
    handed_back: list[Callable[[], None]] = []
    intake = Intake(_no_ledger, _NO_PUBLISHERS, threads=1, on_loop=handed_back.append)
    intake._ledger = harness.ledger  # type: ignore[assignment]
    in_hand = FakeMessage(json.dumps(fresh(example("accept"))).encode())
    queued = FakeMessage(json.dumps(fresh(example("accept"))).encode())
    intake.on_message(in_hand)  # type: ignore[arg-type]
    intake.on_message(queued)  # type: ignore[arg-type]
    assert entered.wait(10)
    threading.Timer(0.2, release.set).start()
    intake.close()  # the loop has stopped: the last acknowledgements are given by close itself
    assert handed_back == []
    assert (in_hand.acks, queued.acks, queued.requeues) == (1, 0, 0)
    assert len(harness.applied) == 1


def test_closing_cuts_a_retry_pause_short_and_requeues(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(step.Intake, "_pause", REAL_PAUSE)  # the real, long pause
    harness.ledger.fail = True
    intake = Intake(_no_ledger, _NO_PUBLISHERS, threads=1, on_loop=lambda callback: None)
    intake._ledger = harness.ledger  # type: ignore[assignment]
    failing = FakeMessage(b"[]", headers={"x-delivery-count": 10})  # a pause of MAX_RETRY_PAUSE
    intake.on_message(failing)  # type: ignore[arg-type]
    time.sleep(0.2)
    started = time.monotonic()
    intake.close()
    assert time.monotonic() - started < 2
    assert (failing.acks, failing.requeues) == (0, 1)


def test_an_error_that_escapes_the_handler_is_logged(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    harness.ledger.fail = True
    intake = Intake(_no_ledger, _NO_PUBLISHERS, threads=1, on_loop=lambda callback: None)
    intake._ledger = harness.ledger  # type: ignore[assignment]

    def broken_retry(message: Any) -> None:
        raise RuntimeError("requeue machinery broke")

    monkeypatch.setattr(intake, "_retry_later", broken_retry)
    intake.on_message(FakeMessage(b"[]"))  # type: ignore[arg-type]
    intake.close()
    assert "left unacknowledged by an unexpected error" in caplog.text
    assert "requeue machinery broke" in caplog.text


def test_a_consumer_with_an_event_loop_gets_intake_threads_and_one_without_handles_messages_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Hub:
        def call_soon(self, callback: Callable[[], None]) -> None:
            callback()

    runtime = create_app(Settings(broker_url="memory://", intake_threads=3)).runtime
    threaded = runtime.intake(Hub())
    inline = runtime.intake(None)
    try:
        assert threaded._executor is not None
        assert threaded._executor._max_workers == 3
        assert inline._executor is None
    finally:
        threaded.close()
        inline.close()


def test_a_revoked_privilege_stops_the_intake_and_hands_the_message_back(harness: Harness) -> None:
    """It used to requeue each message about twenty times, then RabbitMQ dead-lettered it raw."""
    stops: list[int] = []
    harness.intake.stop_consuming = lambda: stops.append(1)

    def refused(action: Action) -> Arrival:
        raise LedgerPermissionDenied("permission denied for function record_received")

    harness.ledger.receive = refused  # type: ignore[method-assign]
    messages = [FakeMessage(json.dumps(fresh(example("accept"))).encode()) for _ in range(3)]
    for message in messages:
        harness.intake.on_message(message)  # type: ignore[arg-type]
    assert stops == [1]  # once, however many messages fail
    assert [(m.acks, m.requeues) for m in messages] == [(0, 1)] * 3
    assert harness.dead == []


def test_at_the_delivery_limit_the_intake_dead_letters_it_itself_sealed_not_raw(harness: Harness) -> None:
    harness.ledger.fail = True
    message = fresh(example("call"))
    raw = FakeMessage(json.dumps(message).encode(), headers={"x-delivery-count": DELIVERY_LIMIT - 1})
    harness.intake.on_message(raw)  # type: ignore[arg-type]
    assert (raw.acks, raw.requeues) == (1, 0)
    ((body, reason, options),) = harness.dead
    assert "gave up after 20 deliveries" in reason
    assert options["extra_headers"][OUTCOME_HEADER] == "dead_lettered"
    assert message["params"]["call_from"] not in json.dumps(body)  # no key: left out, and said so
    assert options["extra_headers"]["x-reservations-left-out"]
