"""Decide what to do with an action, given the reservation's current status.

Step 2 of the design's If-Match protocol, as a pure function: the worker calls it after every
fetch (and again after every 412), so a reservation that moved on meanwhile is re-judged from
scratch instead of being overwritten blindly. No I/O, no clock: ``now`` is passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from workers.core.action import STATUS_ACTIONS, Action, ActionKind
from workers.core.state_machine import ACCEPTING_INSTRUCTIONS, Status


class Outcome(enum.StrEnum):
    """The one terminal result of an action (design doc, Vocabulary)."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    INVALID_TRANSITION = "invalid_transition"
    EXPIRED = "expired"
    FAILED = "failed"
    REJECTED_INPUT = "rejected_input"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class Send:
    """Send the update with If-Match; ``target`` is the status it should lead to, if it changes one."""

    arguments: Mapping[str, Any]
    target: Status | None


@dataclass(frozen=True, slots=True)
class Finish:
    """Nothing to send: the action ends here with ``outcome``."""

    outcome: Outcome
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Not possible yet, but may become possible (e.g. ``complete`` while still ``pending``)."""

    reason: str


Decision = Send | Finish | Wait

# From which statuses each plain status action can be sent.
_SENDABLE_FROM: Mapping[Status, frozenset[Status]] = {
    Status.ACCEPTED: frozenset({Status.PENDING}),
    Status.REJECTED: frozenset({Status.PENDING}),
    Status.WRAPPING: frozenset({Status.ACCEPTED}),
    Status.COMPLETED: frozenset({Status.ACCEPTED, Status.WRAPPING}),
}

# Statuses from which an action may still become sendable later (someone else accepts it).
_MAY_BECOME_SENDABLE: Mapping[Status, frozenset[Status]] = {
    Status.WRAPPING: frozenset({Status.PENDING}),
    Status.COMPLETED: frozenset({Status.PENDING}),
}


def target_status(action: Action) -> Status | None:
    """The status the action leads to, or None when it changes no status (a non-accepting call)."""
    status = STATUS_ACTIONS.get(action.action)
    if status is not None:
        return status
    arguments = action.update_arguments()
    requested = arguments.get("reservation_status")
    if requested is not None:
        return Status(requested)
    instruction = arguments.get("instruction")
    if instruction in ACCEPTING_INSTRUCTIONS:
        return Status.ACCEPTED
    if instruction == "call" and arguments.get("call_accept"):
        return Status.ACCEPTED
    if instruction == "redirect" and arguments.get("redirect_accept"):
        return Status.ACCEPTED
    return None


def plan(action: Action, current: Status, now: datetime) -> Decision:
    """What to do next for ``action`` on a reservation that is ``current``."""
    target = target_status(action)
    if target is not None and current is target:
        return Finish(Outcome.ALREADY_APPLIED, f"reservation is already {current}")
    if action.not_after is not None and now > action.not_after:
        return Finish(Outcome.EXPIRED, f"past not_after {action.not_after.isoformat()}")
    if action.expected_status is not None and current is not action.expected_status:
        return Finish(
            Outcome.INVALID_TRANSITION,
            f"reservation is {current}, the action expected {action.expected_status}",
        )
    arguments = action.update_arguments()
    if "instruction" in arguments:
        sendable_from = frozenset(
            {Status.ACCEPTED if arguments["instruction"] == "supervise" else Status.PENDING}
        )
    elif target is not None:
        sendable_from = _SENDABLE_FROM.get(target, frozenset())
    else:
        sendable_from = frozenset()
    if current in sendable_from:
        return Send(arguments, target)
    if target is not None and current in _MAY_BECOME_SENDABLE.get(target, frozenset()):
        return Wait(f"cannot {action.action} a {current} reservation yet")
    return Finish(Outcome.INVALID_TRANSITION, f"cannot {_describe(action)} a {current} reservation")


def _describe(action: Action) -> str:
    return "update" if action.action is ActionKind.UPDATE else str(action.action)
