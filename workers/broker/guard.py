"""The task consumer, guarded: no message body of the apply queue reaches a log line or leaves in clear.

Celery's own consumer prints whole bodies when it refuses a message ("Received unregistered task",
"Received and deleted unknown message", "Received invalid task message", "Can't decode message
body"), and then rejects it, so that RabbitMQ dead-letters the bytes, in clear, to
``reservations.dead``. Anyone with broker credentials can publish such a message to
``reservations.apply``, with a ``sip_auth_password`` in it.

:class:`GuardedConsumer` (Celery's ``worker_consumer``) looks at every task message before Celery
does and refuses, without printing it, anything but a JSON ``reservations.apply`` task message of
protocol 2 whose arguments are one object: pickled or otherwise non-JSON content ("untrusted
content"), unregistered tasks, task messages of another shape. A refused message is logged with its
size and SHA-256 only, goes to ``reservations.dead`` as that digest (never its bytes, see
``workers.broker.sealing``) and is acknowledged. Celery's refusal handlers are overridden the same
way, should one still be reached. What the object holds is the applier's to judge (the schema:
``rejected_input``).

:class:`BodyFilter` is the second line: on the worker's log handlers, it withholds the arguments of
Celery's log lines that print bodies or task arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from celery.worker.consumer.consumer import (
    INVALID_TASK_ERROR,
    MESSAGE_DECODE_ERROR,
    UNKNOWN_FORMAT,
    UNKNOWN_TASK_ERROR,
    Consumer,
)
from kombu.message import Message

from workers.broker.dead_letters import publish_dead_letter
from workers.broker.sealing import kept_of_refused, raw_body
from workers.broker.topology import APPLY_TASK_NAME, OUTCOME_HEADER, REJECT_CODE_HEADER
from workers.core.planner import Outcome
from workers.core.validation import ACCEPTED_ENCODINGS

logger = logging.getLogger("workers.guard")

JSON = "application/json"


def refusal(message: Message) -> tuple[str, str] | None:
    """Why a message of the apply queue must not reach Celery's handlers (a code and a reason
    that quotes nothing of the body), or None. Pure but for reading the message."""
    content_type = (message.content_type or "").split(";")[0].strip().lower()
    if content_type != JSON:
        return "content_type", f"content type {_short(message.content_type)} is not {JSON}"
    if (message.content_encoding or "").strip().lower() not in ACCEPTED_ENCODINGS:
        return (
            "content_encoding",
            f"content encoding {_short(message.content_encoding)} is not utf-8 or binary",
        )
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return "unknown_message", "not a Celery task message of protocol 2"
    if headers.get("task") != APPLY_TASK_NAME:
        return "unregistered_task", f"task {_short(headers.get('task'))} is not {APPLY_TASK_NAME}"
    try:
        # Strictly UTF-8: json.loads would also read UTF-16 and UTF-32 bytes.
        body = json.loads(raw_body(message).decode("utf-8"))
    except UnicodeDecodeError:
        return "not_utf8", "the body is not UTF-8"
    except ValueError:
        return "invalid_json", "the body is not JSON"
    shaped = (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and len(body[0]) == 1
        and isinstance(body[0][0], dict)
        and body[1] == {}
        and isinstance(body[2], dict)
    )
    if not shaped:
        return "invalid_task", "the body is not [[<one object>], {}, {<options>}]"
    return None


class GuardedConsumer(Consumer):  # type: ignore[misc]  # celery ships no types
    """Celery's consumer, refusing what it would print (see the module's docstring)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Message) -> Any:
            refused = refusal(message)
            if refused is not None:
                return self._refuse(message, *refused)
            return handle(message)

        return on_task_received

    def on_unknown_message(self, body: Any, message: Message) -> None:
        self._refuse(message, "unknown_message", "not a task message")

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._refuse(message, "unregistered_task", "an unregistered task")

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        self._refuse(message, "invalid_task", f"an invalid task message ({type(exc).__name__})")

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        self._refuse(message, "content_encoding", f"cannot be decoded ({type(exc).__name__})")

    def _refuse(self, message: Message, code: str, reason: str) -> None:
        raw = raw_body(message)
        digest = hashlib.sha256(raw).hexdigest()
        text = f"{code}: {reason}"
        logger.warning(
            "refused a message on the apply queue: %s (%d bytes, sha256 %s; body not shown)",
            text,
            len(raw),
            digest,
            extra={"outcome": Outcome.REJECTED_INPUT.value},
        )
        kept, headers = kept_of_refused(None, raw, message.content_type)
        try:
            publish_dead_letter(
                self.app.runtime.publishers,
                kept,
                text,
                extra_headers={
                    OUTCOME_HEADER: Outcome.REJECTED_INPUT.value,
                    REJECT_CODE_HEADER: code,
                    **headers,
                },
            )
        except Exception:
            # Requeued it would come back (and RabbitMQ would dead-letter its bytes, in clear,
            # after the delivery limit): the digest logged above is what is left of it.
            logger.exception("could not dead-letter the refused message sha256 %s: dropped", digest)
        try:
            message.ack()
        except Exception:
            logger.exception("could not acknowledge the refused message sha256 %s", digest)


# Celery's log lines that print a message body or a task's arguments.
_BODY_TEMPLATES = frozenset(
    {
        UNKNOWN_FORMAT,
        UNKNOWN_TASK_ERROR,
        INVALID_TASK_ERROR,
        MESSAGE_DECODE_ERROR,
        "TaskPool: Apply %s (args:%s kwargs:%s)",
    }
)


class BodyFilter(logging.Filter):
    """Withholds the arguments of Celery's log lines that print message bodies (a handler filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg in _BODY_TEMPLATES:
            first_line = record.msg.splitlines()[0].split("%")[0].strip() or "Celery message report"
            record.msg = f"{first_line} [details withheld: they may hold secrets]"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
