"""Redrive failed and dead-lettered actions from ``reservations.dead``.

The ledger keeps PII only as keyed hashes, so the whole message of an action that ended
``failed`` or ``dead_lettered`` is kept in the dead-letter queue (workers/apply/task.py). A redrive:

1. selects actions from the ledger's registry by outcome (default ``dead_lettered`` and
   ``failed``), reservation, time of the outcome and Twilio error code;
2. reads every message waiting in ``reservations.dead`` without acknowledging it, and matches
   them by the ``x-reservations-action-id`` header or the message's own ``action_id``;
3. for each match, publishes a copy under a NEW ``action_id`` (the registry's outcome is final
   per action id), with the same ``correlation_id`` and ``producer = "redrive"``, through
   ``ReservationsApp.enqueue`` (publisher confirms); then appends a ``redrive`` row to the
   original (detail ``redriven as <new id>``), and only then acknowledges the dead letter;
4. messages it did not redrive go back to the queue untouched (they were never acknowledged).

An original is redriven at most once: if its dead letter comes back after a redrive (the
acknowledgement was lost), it is reported as stale and left alone. Were it sent again anyway,
the copy would still be harmless: the protocol would end it ``already_applied``.

The redriven action goes through the whole If-Match protocol again: a reservation that moved on
meanwhile ends ``invalid_transition`` or ``already_applied``, never a blind overwrite.

Dead letters keep their sensitive parameters sealed with ``DEAD_LETTER_KEY`` (workers.broker.sealing):
redrive decrypts them with the same key. A dead letter it cannot read back (the key is not set,
or is another one) or one that left them out (the workers had no key) is reported
``not_redrivable`` with the reason, and stays in the queue.

Messages whose action the ledger never settled (the ledger was down when it was dead-lettered)
are redriven too when the outcome in their header is selected and no ledger-only filter (time,
error code) was given; their redrive is linked only if the ledger received the original.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.fernet import MultiFernet
from kombu.connection import Connection
from kombu.message import Message

from workers.audit.queries import REDRIVEN_AS
from workers.broker.sealing import LEFT_OUT_HEADER, Unsealable, unseal_message
from workers.broker.topology import (
    ACTION_ID_HEADER,
    APPLY_TASK_NAME,
    OUTCOME_HEADER,
    REASON_HEADER,
    dead_letter_queue,
)
from workers.core.action import Action
from workers.core.planner import Outcome
from workers.ledger.events import Redrive
from workers.ledger.models import ActionRecord
from workers.ledger.ports import LedgerWriter
from workers.ledger.reader import LedgerReader

REDRIVE_PRODUCER = "redrive"
# indeterminate: only an operator who has checked the evidence redrives it (it may send again
# an update that did land), so it is redriven only when asked for by name (--outcome).
REDRIVABLE_OUTCOMES = frozenset({Outcome.DEAD_LETTERED.value, Outcome.FAILED.value})
REDRIVABLE_ON_REQUEST = REDRIVABLE_OUTCOMES | {Outcome.INDETERMINATE.value}
DEFAULT_MAX_MESSAGES = 10_000


class Verdict(enum.StrEnum):
    REDRIVEN = "redriven"
    WOULD_REDRIVE = "would_redrive"  # --dry-run
    NOT_REDRIVABLE = "not_redrivable"  # selected, but it cannot be sent again
    LEFT_IN_QUEUE = "left_in_queue"  # a dead letter that the filters did not select


@dataclass(frozen=True, slots=True)
class RedriveFilters:
    outcomes: frozenset[str] = REDRIVABLE_OUTCOMES
    reservation_sid: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    twilio_error_code: int | None = None

    @property
    def ledger_only(self) -> bool:
        """Filters that only the ledger can answer (a message carries no outcome time or code)."""
        return self.since is not None or self.until is not None or self.twilio_error_code is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """What redrive did (or would do) with one action."""

    action_id: uuid.UUID | None
    verdict: Verdict
    reason: str
    reservation_sid: str | None = None
    outcome: str | None = None
    new_action_id: uuid.UUID | None = None


@dataclass(slots=True)
class DeadLetter:
    """One message read from ``reservations.dead``, held unacknowledged."""

    message: Message
    action_id: uuid.UUID | None
    body: dict[str, Any] | None
    outcome: str | None
    reason: str | None
    problem: str | None  # why its action cannot be rebuilt from it, if it cannot


def parse_dead_letter(body: bytes, headers: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """The action message a dead letter carries, or None and why. Pure.

    Our own dead letters carry the v1 message as their body; a message that RabbitMQ itself
    dead-lettered from the apply queue (delivery limit) is a Celery task message whose first
    argument is the v1 message.
    """
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"the body is not JSON: {exc}"
    if headers.get("task") == APPLY_TASK_NAME and isinstance(payload, list) and payload:
        args = payload[0]
        payload = args[0] if isinstance(args, list) and args else None
    if not isinstance(payload, dict):
        return None, "the body is not an action message"
    return payload, None


def _dead_letter(message: Message, keys: MultiFernet | None = None) -> DeadLetter:
    headers: Mapping[str, Any] = message.headers or {}
    body, problem = parse_dead_letter(message.body, headers)
    left_out = headers.get(LEFT_OUT_HEADER)
    if body is not None and problem is None and left_out:
        problem = (
            f"the workers had no DEAD_LETTER_KEY when it was dead-lettered, so its sensitive"
            f" parameters ({left_out}) were left out of it: it cannot be resent; publish a new"
            " action with them"
        )
    elif body is not None and problem is None:
        try:
            body = unseal_message(body, keys)
        except Unsealable as exc:
            problem = str(exc)
    raw_id = headers.get(ACTION_ID_HEADER) or headers.get("id") or (body or {}).get("action_id")
    action_id = None
    try:
        action_id = uuid.UUID(str(raw_id)) if raw_id is not None else None
    except ValueError:
        problem = problem or f"its action_id {raw_id!r} is not a UUID"
    if body is not None and problem is None:
        try:
            Action.from_message(body)
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"its message is not a valid action: {exc}"
    return DeadLetter(
        message=message,
        action_id=action_id,
        body=body,
        outcome=_text(headers.get(OUTCOME_HEADER)),
        reason=_text(headers.get(REASON_HEADER)),
        problem=problem,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@contextmanager
def dead_letters(
    broker_url: str, max_messages: int = DEFAULT_MAX_MESSAGES, keys: MultiFernet | None = None
) -> Iterator[list[DeadLetter]]:
    """Every message waiting in ``reservations.dead`` (up to ``max_messages``), held unacked, their
    sealed parameters decrypted with ``keys`` (``DEAD_LETTER_KEY``, see ``workers.broker.sealing``).

    Acknowledge one with ``letter.message.ack()``; the rest return to the queue, untouched, when
    the block ends (the channel closes; nothing is rejected).
    """
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            queue = dead_letter_queue()(channel)
            queue.declare()
            held: list[DeadLetter] = []
            while len(held) < max_messages:
                message = queue.get(no_ack=False)
                if message is None:
                    break
                held.append(_dead_letter(message, keys))
            yield held
        finally:
            channel.close()


def new_action(message: Mapping[str, Any]) -> Action:
    """The copy that is sent again: a new action_id, the same correlation_id, producer "redrive"."""
    original = Action.from_message(message)
    return dataclasses.replace(original, action_id=uuid.uuid4(), producer=REDRIVE_PRODUCER)


def select(
    ledger: LedgerReader, filters: RedriveFilters, limit: int = DEFAULT_MAX_MESSAGES
) -> list[ActionRecord]:
    """The registry's actions that the filters select, oldest outcome first."""
    candidates = ledger.settled_actions(
        sorted(filters.outcomes),
        reservation_sid=filters.reservation_sid,
        since=filters.since,
        until=filters.until,
        limit=limit,
    )
    if filters.twilio_error_code is None:
        return candidates
    return [
        record
        for record in candidates
        if ledger.history(action_id=record.action_id, twilio_error_code=filters.twilio_error_code, limit=1)
    ]


Publish = Callable[[Action], None]


def redrive(
    ledger: LedgerReader,
    writer: LedgerWriter,
    letters: Sequence[DeadLetter],
    publish: Publish,
    filters: RedriveFilters,
    *,
    dry_run: bool = False,
    limit: int = DEFAULT_MAX_MESSAGES,
) -> list[Decision]:
    """Redrive the selected actions whose messages are among ``letters``; report every one.

    ``publish`` must return only once the broker has confirmed the message
    (``ReservationsApp.enqueue`` does). A dead letter is acknowledged only after its copy
    was published and the redrive recorded (through ``writer``). With ``dry_run`` nothing is
    published, recorded or acknowledged.
    """
    by_id: dict[uuid.UUID, list[DeadLetter]] = {}
    for letter in letters:
        if letter.action_id is not None:
            by_id.setdefault(letter.action_id, []).append(letter)
    decisions: list[Decision] = []
    handled: set[uuid.UUID] = set()

    for record in select(ledger, filters, limit):
        handled.add(record.action_id)
        copies = by_id.get(record.action_id, [])
        decisions.append(_redrive_one(writer, record.action_id, record, copies, publish, dry_run))

    for letter in letters:
        if letter.action_id is not None and letter.action_id in handled:
            continue
        if letter.action_id is not None:
            handled.add(letter.action_id)
        known = ledger.action(letter.action_id) if letter.action_id is not None else None
        # An original already redriven keeps its outcome and counts the redrive; its dead letter
        # can only be back because an acknowledgement was lost: never send it twice.
        unsettled = known is None or (known.outcome is None and known.redrives == 0)
        reservation = (letter.body or {}).get("reservation_sid")
        selected = (
            letter.action_id is not None
            and unsettled
            and letter.outcome in filters.outcomes
            and not filters.ledger_only
            and filters.reservation_sid in (None, reservation)
        )
        if selected:
            assert letter.action_id is not None
            copies = by_id[letter.action_id]
            decisions.append(_redrive_one(writer, letter.action_id, known, copies, publish, dry_run))
            continue
        why = _left_because(letter, known, filters)
        decisions.append(
            Decision(
                letter.action_id,
                Verdict.LEFT_IN_QUEUE,
                why,
                reservation_sid=_text(reservation),
                outcome=known.outcome if known is not None else letter.outcome,
            )
        )
    return decisions


def _left_because(letter: DeadLetter, record: ActionRecord | None, filters: RedriveFilters) -> str:
    if letter.action_id is None:
        return letter.problem or "it names no action_id"
    if letter.problem is not None:
        return letter.problem
    if record is not None and record.redrives:
        return "it was already redriven (see `reservations show`); this copy of its dead letter is stale"
    if record is not None and record.outcome is not None:
        return f"its outcome {record.outcome} or another filter did not select it"
    return (
        f"the ledger has no outcome for it and its header says {letter.outcome or 'nothing'};"
        " not selected by the filters"
    )


def _redrive_one(
    writer: LedgerWriter,
    action_id: uuid.UUID,
    record: ActionRecord | None,
    copies: Sequence[DeadLetter],
    publish: Publish,
    dry_run: bool,
) -> Decision:
    reservation = record.reservation_sid if record is not None else None
    if reservation is None and copies:
        reservation = _text((copies[0].body or {}).get("reservation_sid"))
    outcome = record.outcome if record is not None else (copies[0].outcome if copies else None)

    def decided(verdict: Verdict, reason: str, new_id: uuid.UUID | None = None) -> Decision:
        return Decision(action_id, verdict, reason, reservation, outcome, new_id)

    if not copies:
        return decided(
            Verdict.NOT_REDRIVABLE,
            "its message is not in reservations.dead (already redriven, purged, or never kept:"
            " the ledger holds its PII only as keyed hashes, so it cannot be rebuilt from the ledger)",
        )
    letter = next((c for c in copies if c.problem is None and c.body is not None), None)
    if letter is None or letter.body is None:
        return decided(Verdict.NOT_REDRIVABLE, copies[0].problem or "its dead letter holds no message")
    copy = new_action(letter.body)
    if dry_run:
        return decided(Verdict.WOULD_REDRIVE, f"would be sent again as a new action ({outcome})")
    publish(copy)
    linked = "linked in the ledger"
    if record is not None:
        writer.append(Redrive(action_id, detail=REDRIVEN_AS.format(action_id=copy.action_id)))
    else:
        linked = "not linked: the ledger never received the original"
    for each in copies:
        each.message.ack()
    return decided(Verdict.REDRIVEN, f"sent again as {copy.action_id}, {linked}", copy.action_id)
