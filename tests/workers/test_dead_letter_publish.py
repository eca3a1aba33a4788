"""A dead letter that RabbitMQ does not confirm must not cost the message: it goes back to the queue."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject

from workers import tasks
from workers.celery import app


def test_an_unconfirmed_dead_letter_hands_the_message_back_for_another_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unconfirmed(*args: Any, **options: Any) -> None:
        raise TimeoutError("no confirm in 10 s")

    monkeypatch.setattr(tasks, "publish_dead_letter", unconfirmed)
    with pytest.raises(Reject) as rejected:
        tasks._dead_letter(app, {"action_id": "x"}, "failed", action_id="x", extra_headers={})
    assert rejected.value.requeue is True
    assert isinstance(rejected.value.reason, TimeoutError)


def test_a_confirmed_dead_letter_is_published_once(monkeypatch: pytest.MonkeyPatch) -> None:
    published: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks, "publish_dead_letter", lambda *args, **options: published.append(args))
    tasks._dead_letter(app, {"action_id": "x"}, "failed", action_id="x", extra_headers={})
    assert published == [(app, {"action_id": "x"}, "failed")]
