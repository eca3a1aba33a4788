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
from workers.core.state_machine import ACCEPTING_INSTRUCTIONS, CLIENT_TRANSITIONS, SYSTEM_TRANSITIONS, Status


class Outcome(enum.StrEnum):
    """The one terminal result of an action (design doc, Vocabulary)."""

    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"
    INVALID_TRANSITION = "invalid_transition"
    EXPIRED = "expired"
    FAILED = "failed"
    REJECTED_INPUT = "rejected_input"
    DEAD_LETTERED = "dead_lettered"
    # An answer was lost and the reservation cannot tell whether our update landed: nothing is
    # sent again; an operator decides, with the evidence, through redrive.
    INDETERMINATE = "indeterminate"


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


@dataclass(frozen=True, slots=True)
class Resend:
    """The lost update did not land: plan again from the reservation as it is now."""

    reason: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The lost update landed: the reservation moved to the action's target."""

    reason: str


@dataclass(frozen=True, slots=True)
class Undecidable:
    """Whether the lost update landed cannot be known from the reservation: settle ``indeterminate``."""

    reason: str


Resolution = Resend | Confirmed | Undecidable


def reachable_from(status: Status) -> frozenset[Status]:
    """Every status a reservation can reach from ``status`` (itself included), by anyone."""
    seen, frontier = {status}, [status]
    while frontier:
        current = frontier.pop()
        for following in CLIENT_TRANSITIONS.get(current, frozenset()) | SYSTEM_TRANSITIONS.get(
            current, frozenset()
        ):
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    return frozenset(seen)


def resolve_lost_answer(
    action: Action,
    *,
    sent_etag: str | None,
    sent_from: Status | None,
    current_etag: str | None,
    current: Status,
) -> Resolution:
    """What an earlier update of ``action``, whose answer was lost, did (ops/LEDGER.md, "Lost answers").

    It was sent from ``sent_from`` with ``If-Match: sent_etag``; the reservation is now ``current``
    with ``current_etag``. An unchanged ETag proves it did not land. A moved ETag with the action's
    target status is taken as ours. A status-changing action whose status did not move did not
    land either (no transition leads back to where it was sent from). Anything else, e.g. a call
    without ``call_accept`` or a status that someone else could have set, cannot be told apart.
    """
    evidence = f"sent with If-Match {sent_etag} from {sent_from}; now ETag {current_etag}, {current}"
    if sent_etag is not None and current_etag == sent_etag:
        return Resend(f"the update did not land ({evidence})")
    target = target_status(action)
    if target is not None and current is target:
        return Confirmed(f"confirmed after a lost answer ({evidence})")
    if target is not None and sent_from is not None and current is sent_from:
        return Resend(f"the update did not land: the status did not move ({evidence})")
    if target is not None and current not in reachable_from(target):
        # e.g. an accept, and the reservation is now rejected or timed out: no path leads there
        # from accepted, so someone else moved it from where we sent ours, which did not land.
        return Resend(f"the update did not land: {current} cannot follow {target} ({evidence})")
    return Undecidable(f"an answer was lost and the reservation cannot tell whether it landed ({evidence})")


def _describe(action: Action) -> str:
    return "update" if action.action is ActionKind.UPDATE else str(action.action)
