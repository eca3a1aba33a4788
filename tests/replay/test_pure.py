"""The pure parts of audit and replay: time parsing, row names, the timeline fold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from workers.audit.params import parse_rfc3339, parse_time
from workers.audit.rows import EVENT_FIELDS, event_row
from workers.audit.timeline import action_summaries, steps
from workers.ledger.models import LedgerRow

T0 = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def event(position: int, kind: str, **fields: object) -> LedgerRow:
    values: dict[str, object] = dict.fromkeys(LedgerRow.__dataclass_fields__)
    values.update(
        position=position,
        tx_id=1000 + position,
        recorded_at=T0 + timedelta(seconds=position),
        chain_key="WR" + "0" * 32,
        chain_seq=position,
        prev_hash=b"\0" * 32,
        row_hash=bytes([position]) * 32,
        kind=kind,
        reservation_sid="WR" + "0" * 32,
    )
    values.update(fields)
    return LedgerRow(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31T12:00:00Z", T0),
        ("2026-01-31t12:00:00z", T0),
        ("2026-01-31 12:00:00+00:00", T0),
        ("2026-01-31T13:00:00+01:00", T0),
        ("2026-01-31T12:00:00.123456789Z", T0 + timedelta(microseconds=123456)),
        (
            "2026-01-31T12:00:00.5-00:30",
            datetime(2026, 1, 31, 12, 0, 0, 500000, timezone(-timedelta(minutes=30))),
        ),
    ],
)
def test_rfc3339_times(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    ["2026-01-31T12:00:00", "2026-01-31", "1700000000", "2026-02-30T00:00:00Z", "2026-01-31T25:00:00Z", ""],
)
def test_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|not a valid time"):
        parse_rfc3339(text)


def test_people_may_type_a_plain_utc_date() -> None:
    assert parse_time("2026-01-31 12:00") == T0
    assert parse_time("2026-01-31") == T0.replace(hour=0)
    assert parse_time("2026-01-31T12:00:00Z") == T0


def test_rows_are_presented_under_the_audit_names() -> None:
    row = event_row(event(7, "outcome", twilio_error_code=20404, action_id=uuid.UUID(int=1)))
    assert list(row) == list(EVENT_FIELDS)
    assert (row["position"], row["twilio_error_code"], row["cursor"]) == (7, 20404, "1007:7")
    assert row["action_id"] == "00000000-0000-0000-0000-000000000001"
    assert row["recorded_at"] == "2026-01-31T12:00:07+00:00"
    assert row["row_hash"] == "07" * 32


def test_the_timeline_is_the_transitions_with_their_outcomes() -> None:
    accept, late = uuid.uuid4(), uuid.uuid4()
    events = [
        event(1, "transition", from_status=None, to_status="pending", etag_after="1"),
        event(2, "received", action_id=accept, action="accept"),
        event(3, "transition", from_status="pending", to_status="accepted", etag_after="2", action_id=accept),
        event(4, "outcome", action_id=accept, outcome="applied"),
        event(5, "transition", from_status="accepted", to_status="canceled", etag_after="3"),
        event(6, "received", action_id=late, action="complete"),
        event(7, "outcome", action_id=late, outcome="invalid_transition"),
    ]
    found = steps(events)
    assert [(s.position, s.from_status, s.to_status, s.etag) for s in found] == [
        (1, None, "pending", "1"),
        (3, "pending", "accepted", "2"),
        (5, "accepted", "canceled", "3"),
    ]
    assert [s.outcome for s in found] == [None, "applied", None]
    assert [s.action_id for s in found] == [None, accept, None]


def test_a_step_shows_the_outcome_its_action_settled_with_not_a_later_refusal() -> None:
    """Since 0013 the transition that settles an action carries its outcome. A malformed message
    that reuses the action's id later is refused with a ``rejected_input`` row of that id in the
    same chain, whose outcome is set too but settles nothing (the registry keeps the first): the
    step keeps the outcome of the action's first settling row, as the action summaries do."""
    accept = uuid.uuid4()
    events = [
        event(1, "received", action_id=accept, action="accept"),
        event(
            2,
            "transition",
            from_status="pending",
            to_status="accepted",
            etag_after="2",
            action_id=accept,
            outcome="applied",
        ),
        event(3, "rejected_input", action_id=accept, outcome="rejected_input", detail="bad params"),
    ]
    assert [(s.position, s.outcome) for s in steps(events)] == [(2, "applied")]
    assert [(a.outcome, a.detail) for a in action_summaries(events)] == [("applied", None)]
