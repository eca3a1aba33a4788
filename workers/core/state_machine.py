"""The reservation state machine (design doc, "Reservation state machine"; seed 003).

Shared by the emulator, which enforces it, and by the workers, which plan with it, so the two
cannot disagree. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from workers.errors import TransitionRefused


class Status(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    CANCELED = "canceled"
    RESCINDED = "rescinded"
    WRAPPING = "wrapping"
    COMPLETED = "completed"


TERMINAL: frozenset[Status] = frozenset(
    {Status.REJECTED, Status.TIMEOUT, Status.CANCELED, Status.RESCINDED, Status.COMPLETED}
)

# The order a reservation's life goes through its statuses (ledger.status_rank says the same):
# each status is entered at most once, so a transition that ranks below the last one recorded
# happened before it and was learnt late (an event delayed or reordered).
_RANK: Mapping[Status, int] = {Status.PENDING: 0, Status.ACCEPTED: 1, Status.WRAPPING: 2}


def status_rank(status: str) -> int:
    """0 for pending, 1 accepted, 2 wrapping, 3 for every terminal status."""
    return _RANK.get(Status(status), 3)


# What an API client may ask for with ReservationStatus.
CLIENT_TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.ACCEPTED, Status.REJECTED}),
    Status.ACCEPTED: frozenset({Status.WRAPPING, Status.COMPLETED}),
    Status.WRAPPING: frozenset({Status.COMPLETED}),
}

# What TaskRouter does by itself to a reservation nobody answered (or whose task went away).
SYSTEM_TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.TIMEOUT, Status.CANCELED, Status.RESCINDED}),
}

# Instructions that accept the reservation unconditionally; call and redirect accept it only
# when their CallAccept / RedirectAccept flag is true.
ACCEPTING_INSTRUCTIONS = frozenset({"conference", "dequeue"})
OPTIONALLY_ACCEPTING_INSTRUCTIONS = frozenset({"call", "redirect"})

# TaskRouter cancels a task after this many rejections (seed 003 corrects seed 002's "10").
REJECTIONS_BEFORE_TASK_CANCELED = 1000


def status_after_client_update(sid: str, current: Status, requested: Status) -> Status:
    """The status a ``ReservationStatus`` update leads to, or TaskRouter's refusal."""
    if requested in CLIENT_TRANSITIONS.get(current, frozenset()):
        return requested
    raise TransitionRefused(
        f"Reservation {sid} is already in state [{current}] and cannot be updated to [{requested}]"
    )


def status_after_instruction(sid: str, current: Status, instruction: str, accept: bool) -> Status:
    """The status an ``Instruction`` update leads to, or TaskRouter's refusal.

    ``accept`` is the instruction's CallAccept / RedirectAccept flag (ignored by the others).
    """
    if instruction == "supervise":
        if current is not Status.ACCEPTED:
            raise TransitionRefused(f"Reservation {sid} is not currently in an Accepted state.")
        return current
    if current is not Status.PENDING:
        raise TransitionRefused(f"Reservation {sid} is not currently in a Pending state.")
    if instruction in ACCEPTING_INSTRUCTIONS:
        return Status.ACCEPTED
    if instruction in OPTIONALLY_ACCEPTING_INSTRUCTIONS and accept:
        return Status.ACCEPTED
    return Status.PENDING


def status_after_system_event(sid: str, current: Status, requested: Status) -> Status:
    """The status TaskRouter itself moves a reservation to (timeout, cancel, rescind)."""
    if requested in SYSTEM_TRANSITIONS.get(current, frozenset()):
        return requested
    raise TransitionRefused(
        f"Reservation {sid} is already in state [{current}] and cannot be updated to [{requested}]"
    )
