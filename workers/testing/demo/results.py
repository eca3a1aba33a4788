"""What the demo found: each action it sent and its outcome, the figures, and the checks."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from workers.core.planner import Outcome
from workers.ledger.models import LedgerRow


@dataclass(frozen=True, slots=True)
class Sent:
    """One action the demo published, and what became of it."""

    action_id: uuid.UUID
    action: str
    script: str
    reservation_sid: str
    expected: Outcome
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    """Everything the demo found; ``lost`` is true when the run must exit non-zero."""

    database: str = ""
    broker: str = ""
    sent: list[Sent] = field(default_factory=list)
    messages_published: int = 0
    # Of them: sent twice on purpose (the same action_id), and refused by the intake.
    duplicates: int = 0
    invalid: int = 0
    outcome_rows: Counter[uuid.UUID] = field(default_factory=Counter)
    conflicts: int = 0
    attempts_by_status: Counter[str] = field(default_factory=Counter)
    http_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    raced_script: str | None = None
    raced_history: list[LedgerRow] = field(default_factory=list)
    # The source=event transitions of the reservations changed outside our actions.
    event_history: list[LedgerRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        return bool(self.errors) or not all(check.ok for check in self.checks)

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(sent.outcome or "(none)" for sent in self.sent)

    @property
    def unexpected(self) -> list[Sent]:
        return [s for s in self.sent if s.outcome is not None and s.outcome != s.expected.value]

    @property
    def throughput(self) -> float:
        settled = sum(1 for s in self.sent if s.outcome is not None)
        return settled / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def calls_per_action(self) -> float:
        total = sum(op.get("total", 0) for op in self.http_calls.values())
        reached = sum(1 for s in self.sent if s.outcome not in (None, Outcome.REJECTED_INPUT.value))
        return total / reached if reached else 0.0
