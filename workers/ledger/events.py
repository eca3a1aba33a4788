"""What the workers write to the ledger, one frozen dataclass per kind of write.

Every event may carry ``trace_id``, the W3C trace id (32 lowercase hex digits) of the work that
wrote it; the hash chain covers it.

A writer appends these (``LedgerWriter.append``); each becomes one transaction and one ledger
row: a transition that settles its action carries the outcome itself (migration 0013), and only
an answer whose transition TaskRouter's event recorded first settles with a row of its own.
Field names are the ledger's column names, so the words of the events, the SQL, the audit
output and the logs are the same. The ``received`` row is not an event: ``LedgerWriter.receive``
registers the action and reports what the ledger already knows of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workers.core.planner import Outcome
from workers.ledger.models import Source


@dataclass(frozen=True, slots=True)
class Attempt:
    """One update call to TaskRouter, whatever it answered (a 412 is a :class:`Conflict`)."""

    action_id: uuid.UUID
    attempt: int
    etag_before: str | None = None
    http_status: int | None = None
    twilio_error_code: int | None = None
    twilio_request_id: str | None = None
    duration_ms: int | None = None
    detail: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Conflict:
    """A 412: ``etag_before`` was stale; ``etag_after`` and ``to_status`` are what a re-fetch
    found (None when there was no re-fetch). Recorded with ``http_status`` 412."""

    action_id: uuid.UUID
    attempt: int
    etag_before: str | None
    etag_after: str | None = None
    to_status: str | None = None
    twilio_error_code: int | None = None
    twilio_request_id: str | None = None
    duration_ms: int | None = None
    detail: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A status change; the projection follows it in the same transaction.

    With ``action_id`` and ``outcome`` it is the change an action made, and settles the action
    (the first outcome an action gets is final). Without ``action_id`` it is a change observed
    but not caused by us (e.g. a timeout seen on fetch).

    ``source`` says where the ledger learnt it (by default ``action`` with an ``action_id``, else
    ``fetch``); ``trace_id`` is the W3C trace id of the work that wrote it. A reservation enters
    each status once, so a transition that TaskRouter's event and our answer (or a fetch) both
    report is one row: ``TransitionResult.appended`` is false for the second report.
    """

    reservation_sid: str
    from_status: str | None
    to_status: str
    etag_before: str | None
    etag_after: str | None
    action_id: uuid.UUID | None = None
    outcome: Outcome | None = None
    workspace_sid: str | None = None
    task_sid: str | None = None
    worker_sid: str | None = None
    attempt: int | None = None
    http_status: int | None = None
    twilio_request_id: str | None = None
    duration_ms: int | None = None
    detail: str | None = None
    source: Source | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Settle:
    """An action's outcome without a transition (the first outcome recorded wins)."""

    action_id: uuid.UUID
    outcome: Outcome
    http_status: int | None = None
    twilio_error_code: int | None = None
    twilio_request_id: str | None = None
    detail: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedInput:
    """A message that broke the schema, and why (``detail``). The writer keeps of ``message``
    only what is safe: SIDs where they have the right shape, parameters redacted, the rest hashed."""

    message: Mapping[str, Any] | None
    detail: str
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Redrive:
    """An operator sends a settled (typically dead-lettered) action round again."""

    action_id: uuid.UUID
    detail: str | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """Written ahead of an update: the run (``attempt``) is about to send it with If-Match
    ``etag_before`` from ``from_status`` (towards ``to_status``, if it changes one) with
    ``arguments``, of which the ledger keeps only a keyed digest (they may hold PII). A lost
    answer leaves it without a result after it, and the next run resolves it before it may send
    again."""

    action_id: uuid.UUID
    attempt: int
    etag_before: str | None
    from_status: str | None
    to_status: str | None
    arguments: Mapping[str, Any]
    trace_id: str | None = None


# Appended through the one ``record_step`` query; the others have a function each.
Step = Attempt | Conflict | Redrive | Intent
LedgerEvent = Attempt | Conflict | Transition | Settle | RejectedInput | Redrive | Intent
