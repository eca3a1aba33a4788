"""A dead letter that RabbitMQ does not confirm must not cost the message: it goes back to the queue."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery.exceptions import Reject

from workers.apply import task
from workers.apply.applier import Done
from workers.core.planner import Outcome

FAILED = Done(Outcome.FAILED, "failed")
PUBLISHERS: Any = object()


def test_an_unconfirmed_dead_letter_hands_the_message_back_for_another_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unconfirmed(*args: Any, **options: Any) -> None:
        raise TimeoutError("no confirm in 10 s")

    monkeypatch.setattr(task, "publish_dead_letter", unconfirmed)
    with pytest.raises(Reject) as rejected:
        task._dead_letter(PUBLISHERS, {"action_id": "x"}, FAILED, None)
    assert rejected.value.requeue is True
    assert isinstance(rejected.value.reason, TimeoutError)


def test_a_confirmed_dead_letter_is_published_once(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(task, "publish_dead_letter", lambda *args, **options: published.append(args))
    task._dead_letter(PUBLISHERS, {"action_id": "x"}, FAILED, None)
    assert published == [(PUBLISHERS, {"action_id": "x"}, "failed")]


def test_a_message_whose_runs_keep_dying_is_dead_lettered_sealed_before_rabbitmq_does_it_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On its last delivery (x-delivery-count 19 of 20) the task ends it as dead_lettered itself:
    RabbitMQ would otherwise dead-letter the whole Celery message, secrets in clear, no reason."""
    from types import SimpleNamespace

    from tests.fakes import FakeGateway, FakeLedgerWriter
    from workers.apply.applier import ActionApplier
    from workers.core.action import Action, ActionKind

    action = Action(
        uuid.uuid4(),
        ActionKind.CONFERENCE,
        "WS" + "1" * 32,
        "WR" + "3" * 32,
        task_sid="WT" + "2" * 32,
        params={"to": "client:alice", "from_": "+15550100001", "sip_auth_password": "hunter2"},
    )
    ledger, gateway = FakeLedgerWriter(), FakeGateway()
    ledger.receive(action)
    runtime = SimpleNamespace(
        applier=lambda: ActionApplier(ledger, gateway), publishers=PUBLISHERS, dead_letter_keys=None
    )
    request = SimpleNamespace(retries=0, delivery_info={"redelivered": True}, **{"x-delivery-count": 19})
    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(task, "publish_dead_letter", lambda *args, **options: published.append(args))
    fake_task: Any = SimpleNamespace(app=SimpleNamespace(runtime=runtime), request=request)
    assert task.apply_action(fake_task, action.to_message()) == "dead_lettered"
    assert (gateway.fetches, gateway.updates) == (0, 0)
    assert ledger.outcomes[action.action_id] is Outcome.DEAD_LETTERED
    (args,) = published
    assert "hunter2" not in json.dumps(args[1])  # no key: left out, and the header says so
    assert "delivered 20 times" in args[2]
