"""The ledger as the applier sees it: a writer of three verbs (``lock``, ``receive``, ``append``).

:class:`workers.ledger.writer.PostgresLedgerWriter` implements it over PostgreSQL and
``tests.fakes.FakeLedgerWriter`` in memory; one contract suite
(``tests/contracts/test_ledger_writer.py``) runs against both. Nothing here imports psycopg.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, overload

from workers.core.action import Action
from workers.ledger.events import Attempt, Conflict, Intent, Redrive, RejectedInput, Settle, Transition
from workers.ledger.models import Arrival, OutcomeResult, TransitionResult


class LedgerWriter(Protocol):
    def lock(self, reservation_sid: str) -> AbstractContextManager[LedgerWriter]:
        """Serialise the workers on one reservation; the run writes through the writer it yields."""

    def receive(self, action: Action, trace_id: str | None = None) -> Arrival:
        """Register ``action`` (idempotent on ``action_id``): whether it is new, its outcome if it
        has settled already, and the projection of its reservation. ``trace_id``: the W3C trace
        id of the work that received it."""

    @overload
    def append(self, event: Transition) -> TransitionResult: ...
    @overload
    def append(self, event: Settle) -> OutcomeResult: ...
    @overload
    def append(self, event: Attempt | Conflict | RejectedInput | Redrive | Intent) -> int: ...
