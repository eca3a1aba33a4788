"""Enqueue actions from Python: validate, then publish with publisher confirms.

``enqueue`` returns only once RabbitMQ has confirmed the message (the app's transport uses
``confirm_publish``), and raises if it could not. The task id is the action's ``action_id``, so
Flower finds an action by the id its producer chose.
"""

from __future__ import annotations

from celery import Celery

from workers.core.action import Action


def enqueue(action: Action, app: Celery | None = None) -> None:
    """Publish ``action`` to the apply queue (persistent, confirmed)."""
    from workers.tasks import apply_action, display_args

    message = action.to_message()
    options = {
        "task_id": str(action.action_id),
        "argsrepr": display_args(message),
        "kwargsrepr": "{}",
        "delivery_mode": 2,
    }
    if app is None:
        apply_action.apply_async(args=[message], **options)
    else:
        app.send_task(apply_action.name, args=[message], **options)
