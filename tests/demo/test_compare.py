"""The demo's cross-check of the ledger against the emulator's transition log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from workers.ledger.models import LedgerRow
from workers.testing.demo.checks import compare_transitions
from workers.testing.emulator.admin import TransitionInfo

SID = "WR" + "a" * 32


def log_entry(
    sequence: int, before: int, after: int, from_status: str, to_status: str, source: str
) -> TransitionInfo:
    return TransitionInfo(
        sequence, SID, "WT" + "b" * 32, "WK" + "c" * 32, "WS" + "d" * 32, from_status, to_status,
        before, after, source, None, "", 0.0, None,
    )  # fmt: skip


def transition(
    position: int, from_status: str | None, to_status: str, before: str | None, after: str, *, ours: bool
) -> LedgerRow:
    fields: dict[str, Any] = dict.fromkeys(LedgerRow.__slots__)
    fields.update(
        position=position, tx_id=position, recorded_at=datetime.now(UTC), chain_key=SID, chain_seq=position,
        prev_hash=b"", row_hash=b"", kind="transition", reservation_sid=SID, from_status=from_status,
        to_status=to_status, etag_before=before, etag_after=after, action_id=uuid.uuid4() if ours else None,
    )  # fmt: skip
    return LedgerRow(**fields)


# An agent accepts behind our back (v2), then our complete lands (v3).
LOG = [log_entry(1, 1, 2, "pending", "accepted", "admin"), log_entry(2, 2, 3, "accepted", "completed", "api")]


def test_a_ledger_that_saw_everything_agrees() -> None:
    events = [
        transition(1, None, "pending", None, "1", ours=False),
        transition(2, "pending", "accepted", "1", "2", ours=False),
        transition(3, "accepted", "completed", "2", "3", ours=True),
    ]
    assert compare_transitions(events, LOG, {SID: "completed"}) == []


def test_an_update_missing_from_the_ledger_is_a_disagreement() -> None:
    events = [transition(1, None, "pending", None, "1", ours=False)]
    problems = compare_transitions(events, LOG, {SID: "completed"})
    assert any("missing from the ledger" in p for p in problems)
    assert any("ends at pending" in p for p in problems)


def test_a_transition_credited_to_an_action_that_taskrouter_never_applied() -> None:
    events = [transition(1, "pending", "accepted", "1", "2", ours=True)]
    problems = compare_transitions(events, LOG, {SID: "accepted"})
    assert any("credits accepted (ETag 2) to an action" in p for p in problems)


def test_a_wrong_observation_is_a_disagreement() -> None:
    events = [
        transition(1, "pending", "rejected", "1", '"2"', ours=False),
        transition(2, "accepted", "completed", "2", "3", ours=True),
    ]
    problems = compare_transitions(events, LOG, {SID: "completed"})
    assert problems == [f"{SID}: observed rejected at ETag 2, the log says accepted"]
