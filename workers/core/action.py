"""The reservation action: one producer request to change one reservation.

The same model serves the Python producer, the plain-JSON intake, the ledger and the workers.
Its wire form is the design doc's "Wire contract, version 1". Pure: no I/O.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from workers.core.parameters import BY_KEYWORD, Scope
from workers.core.state_machine import Status

SCHEMA_ID = "reservation-action/v1"


class ActionKind(enum.StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"
    WRAPUP = "wrapup"
    COMPLETE = "complete"
    CONFERENCE = "conference"
    DEQUEUE = "dequeue"
    CALL = "call"
    REDIRECT = "redirect"
    UPDATE = "update"


# Actions that are a plain ReservationStatus update, and the status they ask for.
STATUS_ACTIONS: Mapping[ActionKind, Status] = {
    ActionKind.ACCEPT: Status.ACCEPTED,
    ActionKind.REJECT: Status.REJECTED,
    ActionKind.WRAPUP: Status.WRAPPING,
    ActionKind.COMPLETE: Status.COMPLETED,
}

# Actions that are an Instruction update; the instruction has the action's name.
INSTRUCTION_ACTIONS = frozenset(
    {ActionKind.CONFERENCE, ActionKind.DEQUEUE, ActionKind.CALL, ActionKind.REDIRECT}
)


@dataclass(frozen=True, slots=True)
class Action:
    """A validated reservation action.

    ``params`` are the update's body parameters keyed by their twilio-python keyword names
    (``worker_activity_sid``, ``dequeue_from``, ``call_accept``, ...), already typed.
    """

    action_id: uuid.UUID
    action: ActionKind
    workspace_sid: str
    reservation_sid: str
    task_sid: str | None = None
    worker_sid: str | None = None
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    expected_status: Status | None = None
    not_after: datetime | None = None
    correlation_id: str | None = None
    producer: str | None = None

    def __post_init__(self) -> None:
        if self.task_sid is None and self.worker_sid is None:
            raise ValueError("an action needs a task_sid or a worker_sid")
        unknown = set(self.params) - set(BY_KEYWORD)
        if unknown:
            raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def scope(self) -> Scope:
        """The task-scoped endpoint whenever a task SID is known, as the design says."""
        return Scope.TASK if self.task_sid is not None else Scope.WORKER

    def update_arguments(self) -> dict[str, Any]:
        """Keyword arguments for twilio-python's ``update_with_http_info`` (without ``if_match``)."""
        arguments = dict(self.params)
        status = STATUS_ACTIONS.get(self.action)
        if status is not None:
            arguments["reservation_status"] = status.value
        elif self.action in INSTRUCTION_ACTIONS:
            arguments["instruction"] = self.action.value
        return arguments

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Action:
        """Build an action from its wire form.

        Assumes the message passed the JSON Schema; raises ValueError (or KeyError) on the
        structural errors it still meets, never anything else.
        """
        if message.get("schema") != SCHEMA_ID:
            raise ValueError(f"unsupported schema {message.get('schema')!r}")
        expected = message.get("expected_status")
        not_after = message.get("not_after")
        parsed_not_after = None
        if not_after is not None:
            parsed_not_after = datetime.fromisoformat(str(not_after).replace("Z", "+00:00"))
            if parsed_not_after.tzinfo is None:
                raise ValueError("not_after needs a time zone")
        return cls(
            action_id=uuid.UUID(str(message["action_id"])),
            action=ActionKind(message["action"]),
            workspace_sid=str(message["workspace_sid"]),
            reservation_sid=str(message["reservation_sid"]),
            task_sid=message.get("task_sid"),
            worker_sid=message.get("worker_sid"),
            params=dict(message.get("params") or {}),
            expected_status=Status(expected) if expected is not None else None,
            not_after=parsed_not_after,
            correlation_id=message.get("correlation_id"),
            producer=message.get("producer"),
        )

    def to_message(self) -> dict[str, Any]:
        """The wire form: a JSON-ready dict of the v1 contract, without the absent fields."""
        message: dict[str, Any] = {
            "schema": SCHEMA_ID,
            "action_id": str(self.action_id),
            "action": self.action.value,
            "workspace_sid": self.workspace_sid,
            "reservation_sid": self.reservation_sid,
        }
        optional: dict[str, Any] = {
            "task_sid": self.task_sid,
            "worker_sid": self.worker_sid,
            "params": dict(self.params) or None,
            "expected_status": self.expected_status.value if self.expected_status else None,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "correlation_id": self.correlation_id,
            "producer": self.producer,
        }
        message.update({key: value for key, value in optional.items() if value is not None})
        return message
