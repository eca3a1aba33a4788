"""The project's words, settled once: the ledger's columns and event kinds are the log fields, the
metric labels and the audit output (design doc, "Vocabulary"). A test holds every one of them to
this module (``tests/unit/test_vocabulary.py``), so a new field cannot drift into a synonym.

- **action** (``action_id``): one producer request to change one reservation; its idempotency key.
- **run**: one execution of the apply task for an action: 1, then 2 after a delayed retry, ...
  (a redelivery after a crash is the same run again). Logs and metrics count runs.
- **attempt**: one update call to TaskRouter for an action (a ledger row of kind ``attempt``). The
  ledger's ``attempt`` column numbers the run that made the call; ``actions.attempts`` is the
  highest such number.
- **transition**: an observed change of status, ``from_status`` -> ``to_status``, with
  ``etag_before`` and ``etag_after``; its **source** says where the ledger learnt it
  (:data:`SOURCES`: our update's answer, TaskRouter's event, a fetch).
- **trace_id**: the W3C trace id of the work that wrote a row (32 lowercase hex digits).
- **outcome**: the one terminal result of an action (:data:`OUTCOMES`), never anything else:
  receipts and retries are not outcomes.
- **position**: a row's place in the ledger (with ``tx_id``, the ledger order; ``cursor`` is the
  two written ``<tx_id>:<position>``); **chain_seq**: its place in its reservation's hash chain.
- **twilio_error_code**: Twilio's error code (20001, 20404, ...); **http_status** the HTTP status.
"""

from __future__ import annotations

from workers.core.planner import Outcome

OUTCOMES: tuple[str, ...] = tuple(outcome.value for outcome in Outcome)

EVENT_KINDS: tuple[str, ...] = (
    "received",
    "attempt",
    "conflict",
    "transition",
    "outcome",
    "rejected_input",
    "redrive",
    "intent",
)

# Where the ledger learnt a transition (ledger.events.source; workers.ledger.models.Source).
SOURCES: tuple[str, ...] = ("action", "event", "fetch")

# The columns of ledger.events, in the order the audit output shows them (``workers.audit.rows``).
EVENT_COLUMNS: tuple[str, ...] = (
    "position",
    "tx_id",
    "recorded_at",
    "action_id",
    "kind",
    "action",
    "workspace_sid",
    "task_sid",
    "worker_sid",
    "reservation_sid",
    "from_status",
    "to_status",
    "source",
    "etag_before",
    "etag_after",
    "attempt",
    "http_status",
    "twilio_error_code",
    "twilio_request_id",
    "duration_ms",
    "outcome",
    "correlation_id",
    "producer",
    "trace_id",
    "worker_host",
    "worker_pid",
    "params",
    "detail",
    "chain_key",
    "chain_seq",
    "prev_hash",
    "row_hash",
)

# The ledger's columns that the outside world sees (ledger.events, ledger.actions and the
# projection ledger.reservations), by the names the tables give them.
LEDGER_COLUMNS: frozenset[str] = frozenset(
    {
        *EVENT_COLUMNS,
        # ledger.actions
        "expected_status",
        "not_after",
        "received_at",
        "attempts",
        "outcome_at",
        "redrives",
        # ledger.reservations (the projection)
        "status",
        "etag",
        "last_position",
        "updated_at",
    }
)

# Words that are not columns: the run's number, a retry's delay in seconds, the resume point of a
# page, what a metric measures: a TaskRouter ``endpoint`` (fetch, update) or a ledger ``query``
# (the named query of ``workers/ledger/sql/queries.sql``), and TaskRouter's events.
OTHER_WORDS: frozenset[str] = frozenset(
    {
        "run",
        "delay",
        "cursor",
        "endpoint",
        "query",
        # TaskRouter's events: how one reached us (callback, stream, reconcile), what became of it
        # (recorded, duplicate, ignored, refused, invalid, unavailable) and its type (reservation.accepted)
        "channel",
        "result",
        "event_type",
    }
)
# The name of the auditor whose token made a request (the audit API's log lines).
OTHER_WORDS |= {"auditor"}

WORDS: frozenset[str] = LEDGER_COLUMNS | OTHER_WORDS
