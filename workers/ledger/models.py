"""The ledger's vocabulary and its rows as typed, immutable objects.

The words here (event kinds, outcomes) are the ones the SQL checks, the logs and the metrics
use. Rows come back from psycopg through ``class_row`` straight into these dataclasses.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The outcome vocabulary belongs to the pure core; the ledger re-exports it.
from workers.core.planner import Outcome as Outcome


class EventKind(enum.StrEnum):
    RECEIVED = "received"
    ATTEMPT = "attempt"
    CONFLICT = "conflict"
    TRANSITION = "transition"
    OUTCOME = "outcome"
    REJECTED_INPUT = "rejected_input"
    REDRIVE = "redrive"
    INTENT = "intent"


class Source(enum.StrEnum):
    """Where the ledger learnt a transition (the ``source`` column)."""

    ACTION = "action"  # our update's answer
    EVENT = "event"  # TaskRouter told us: an Event Callback, an Event Streams delivery, reconcile
    FETCH = "fetch"  # we noticed it on a fetch


class Role(enum.StrEnum):
    """The database roles the migrations create; the application pool runs as one of them."""

    OWNER = "reservations_owner"
    WRITER = "reservations_writer"
    READER = "reservations_reader"


# The chain of rejected inputs that carry no usable reservation SID.
REJECTED_INPUT_CHAIN = "rejected_input"


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A reader's place in ledger order, which is ``(tx_id, position)``.

    A reader that resumes after a cursor never misses a row: only rows of transactions older
    than every ledger writer still in flight are shown (``ledger.visible_horizon``), and any row
    committed later sorts after.
    """

    tx_id: int
    position: int

    def __str__(self) -> str:
        return f"{self.tx_id}:{self.position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        tx_id, _, position = text.partition(":")
        try:
            return cls(int(tx_id), int(position))
        except ValueError:
            raise ValueError(f"a cursor looks like '<tx_id>:<position>', not {text!r}") from None


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ledger row, as a reader sees it (what a writer appends is in :mod:`workers.ledger.events`)."""

    position: int
    tx_id: int
    recorded_at: datetime
    chain_key: str
    chain_seq: int
    prev_hash: bytes
    row_hash: bytes
    kind: str
    action_id: uuid.UUID | None
    action: str | None
    workspace_sid: str | None
    reservation_sid: str | None
    task_sid: str | None
    worker_sid: str | None
    from_status: str | None
    to_status: str | None
    etag_before: str | None
    etag_after: str | None
    attempt: int | None
    http_status: int | None
    twilio_error_code: int | None
    twilio_request_id: str | None
    duration_ms: int | None
    outcome: str | None
    worker_host: str | None
    worker_pid: int | None
    correlation_id: str | None
    producer: str | None
    params: dict[str, Any] | None
    detail: str | None
    source: str | None = None
    trace_id: str | None = None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.tx_id, self.position)

    @property
    def settles(self) -> bool:
        """The row says how its action ended: an outcome row, a rejected input, or the
        transition that settled it (migration 0013: the applied transition carries it). Read an
        action's first such row: a malformed message that reuses the id of an action that had
        settled already is refused with a rejected input of that id, which settles nothing (the
        registry keeps the first outcome)."""
        return self.outcome is not None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """An action's entry in the registry: what was received, and how it ended."""

    action_id: uuid.UUID
    action: str | None
    workspace_sid: str | None
    reservation_sid: str | None
    task_sid: str | None
    worker_sid: str | None
    params: dict[str, Any] | None
    expected_status: str | None
    not_after: datetime | None
    correlation_id: str | None
    producer: str | None
    received_at: datetime
    attempts: int
    outcome: str | None
    outcome_at: datetime | None
    redrives: int


@dataclass(frozen=True, slots=True)
class Arrival:
    """What ``LedgerWriter.receive`` found: whether the action is new, its outcome if it has one,
    the projection of its reservation (None when the ledger has never seen it), and the intent of
    an update whose answer was lost (None when every update sent got its answer recorded)."""

    created: bool
    outcome: str | None
    reservation: ReservationState | None
    intent: PendingIntent | None = None


@dataclass(frozen=True, slots=True)
class PendingIntent:
    """An update the ledger knows was about to be sent, with no definite answer recorded after it."""

    attempt: int | None
    etag_before: str | None
    from_status: str | None
    to_status: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class ReservationState:
    """A reservation as the projection knows it: the last transition the ledger recorded."""

    reservation_sid: str
    workspace_sid: str | None
    task_sid: str | None
    worker_sid: str | None
    status: str
    etag: str | None
    last_position: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """``transition_position`` is the row that holds the transition: the one just appended, or
    (``appended`` false) the row that already held it, e.g. from TaskRouter's event."""

    transition_position: int
    outcome_position: int | None
    outcome: str | None
    appended: bool = True


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    """``outcome_position`` is None when the action had already settled; ``outcome`` is the first."""

    outcome_position: int | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    checkpoint_id: int
    chains: int
    max_position: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing ``verify`` found wrong. ``position`` is the ledger row it concerns, if any."""

    kind: str
    chain_key: str | None
    position: int | None
    message: str

    def __str__(self) -> str:
        where = f"position {self.position}" if self.position is not None else "no position"
        chain = f" chain {self.chain_key}" if self.chain_key is not None else ""
        return f"{self.kind} at {where}{chain}: {self.message}"


@dataclass(frozen=True, slots=True)
class ChainRow:
    """One row of a hash chain as ``chain_rows`` checks it (hash, link to the previous row, seq)."""

    position: int
    chain_seq: int
    hash_ok: bool
    link_ok: bool
    seq_ok: bool
    row_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainSeals:
    """A chain's head and its latest sealed head (all None when there is none)."""

    head_seq: int | None
    head_hash: bytes | None
    checkpoint_id: int | None
    sealed_seq: int | None
    sealed_hash: bytes | None
    sealed_position: int | None


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    """How many actions ended with ``outcome`` in one time bucket (0: the latest)."""

    outcome: str
    bucket: int
    n: int


@dataclass(frozen=True, slots=True)
class CheckpointSeen:
    """The newest checkpoint, as the overview shows it."""

    checkpoint_id: int
    taken_at: datetime
    chains: int
    max_position: int
