"""A dead letter that RabbitMQ does not confirm must not cost the message: it goes back to the queue."""

from __future__ import annotations

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
