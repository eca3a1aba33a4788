"""The ledger's pure parts: redaction, errors, the projection fold, named queries, cursors."""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
import uuid
from datetime import UTC, datetime

import pytest

from workers.config import Settings
from workers.core.parameters import PARAMETERS
from workers.core.redaction import DEVELOPMENT_PII_KEY, PII_PREFIX, pii_digest, redact_params
from workers.errors import (
    AppendOnlyViolation,
    LedgerError,
    LedgerPermissionDenied,
    LedgerUnavailable,
    MigrationError,
    ReservationsError,
    UnknownAction,
)
from workers.ledger.models import Cursor, EventKind, LedgerRow, Outcome, ReservationState
from workers.ledger.pii import resolve_pii_key
from workers.ledger.projection import differences, fold
from workers.ledger.queries import QUERIES, parse


def test_pii_is_hashed_with_hmac_sha256() -> None:
    expected = hmac.new(b"k", b"+15551234567", hashlib.sha256).hexdigest()
    assert pii_digest("+15551234567", "k") == PII_PREFIX + expected
    assert pii_digest("+15551234567", b"k") == PII_PREFIX + expected
    assert pii_digest("+15551234567", "other") != pii_digest("+15551234567", "k")


def test_redaction_follows_the_catalogue() -> None:
    params = {
        "call_to": "+1555",
        "CallFrom": "+1666",
        "sip_auth_username": "alice",
        "sip_auth_password": "pw",
        "SipAuthPassword": "pw",
        "call_accept": True,
        "call_timeout": 30,
        "mystery": "maybe-pii",
        "api_token": "secret",
    }
    redacted = redact_params(params, "k")
    assert redacted == {
        "call_to": pii_digest("+1555", "k"),
        "CallFrom": pii_digest("+1666", "k"),
        "sip_auth_username": pii_digest("alice", "k"),
        "call_accept": True,
        "call_timeout": 30,
        "mystery": pii_digest("maybe-pii", "k"),
    }


@pytest.mark.parametrize("parameter", [p for p in PARAMETERS if p.pii or p.secret], ids=lambda p: p.wire)
def test_every_pii_and_secret_parameter_is_covered(parameter: object) -> None:
    wire, keyword = parameter.wire, parameter.keyword  # type: ignore[attr-defined]
    for name in (wire, keyword):
        redacted = redact_params({name: "clear-value"}, "k")
        assert "clear-value" not in repr(redacted)


def test_the_development_key_is_used_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert resolve_pii_key(None) == DEVELOPMENT_PII_KEY
    assert "LEDGER_PII_KEY is unset" in caplog.text
    assert DEVELOPMENT_PII_KEY not in caplog.text
    assert resolve_pii_key("production-key") == "production-key"


def test_settings_keep_the_pii_key_and_migration_url_out_of_repr() -> None:
    settings = Settings.from_env(
        {
            "LEDGER_PII_KEY": "k3y",
            "LEDGER_MIGRATION_URL": "postgresql://owner:pw@db/x",
            "DATABASE_URL": "postgresql:///d",
        }
    )
    assert settings.migration_url == "postgresql://owner:pw@db/x"
    assert "k3y" not in repr(settings)
    assert "pw@" not in repr(settings)
    assert Settings.from_env({"DATABASE_URL": "postgresql:///y"}).migration_url == "postgresql:///y"


@pytest.mark.parametrize(
    "error",
    [
        LedgerError("boom"),
        LedgerUnavailable("down"),
        AppendOnlyViolation("ledger.events is append-only: UPDATE refused"),
        LedgerPermissionDenied("permission denied for table events"),
        UnknownAction(str(uuid.UUID(int=1))),
        MigrationError("unknown migration 0099_future"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_ledger_errors_pickle(error: LedgerError) -> None:
    assert isinstance(error, ReservationsError)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round trip
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args


def _event(position: int, sid: str, kind: EventKind, to_status: str | None, etag: str | None) -> LedgerRow:
    return LedgerRow(
        position=position,
        tx_id=position,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        chain_key=sid,
        chain_seq=position,
        prev_hash=b"",
        row_hash=b"",
        kind=kind.value,
        action_id=None,
        action=None,
        workspace_sid="WS1",
        reservation_sid=sid,
        task_sid="WT1",
        worker_sid=None,
        from_status=None,
        to_status=to_status,
        etag_before=None,
        etag_after=etag,
        attempt=None,
        http_status=None,
        twilio_error_code=None,
        twilio_request_id=None,
        duration_ms=None,
        outcome=None,
        worker_host=None,
        worker_pid=None,
        correlation_id=None,
        producer=None,
        params=None,
        detail=None,
    )


def test_the_projection_is_a_fold_of_transitions() -> None:
    events = [
        _event(1, "WRa", EventKind.TRANSITION, "pending", "1"),
        _event(2, "WRa", EventKind.ATTEMPT, None, None),
        _event(3, "WRb", EventKind.TRANSITION, "accepted", "7"),
        _event(4, "WRa", EventKind.TRANSITION, "accepted", "2"),
        _event(5, "WRa", EventKind.OUTCOME, None, None),
    ]
    states = fold(events)
    assert {sid: (s.status, s.etag, s.last_position) for sid, s in states.items()} == {
        "WRa": ("accepted", "2", 4),
        "WRb": ("accepted", "7", 3),
    }
    assert differences(states, fold(events)) == []
    stale = dict(states)
    stale["WRa"] = ReservationState("WRa", "WS1", "WT1", None, "pending", "1", 1, states["WRa"].updated_at)
    assert len(differences(stale, states)) == 1


def test_named_queries_parse() -> None:
    parsed = parse("-- name: one\n-- what it does\nSELECT 1;\n\n-- name: two\nSELECT 2\n")
    assert parsed == {"one": "SELECT 1", "two": "SELECT 2"}
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n")
    assert {"record_received", "record_transition", "history", "verify_rows"} <= set(QUERIES)


def test_cursor_round_trip_and_order() -> None:
    assert Cursor.parse("12:34") == Cursor(12, 34)
    assert str(Cursor(12, 34)) == "12:34"
    assert Cursor(1, 99) < Cursor(2, 1)
    with pytest.raises(ValueError, match="cursor"):
        Cursor.parse("nope")


def test_vocabulary() -> None:
    assert [k.value for k in EventKind] == [
        "received",
        "attempt",
        "conflict",
        "transition",
        "outcome",
        "rejected_input",
        "redrive",
        "intent",
    ]
    assert [o.value for o in Outcome] == [
        "applied",
        "already_applied",
        "invalid_transition",
        "expired",
        "failed",
        "rejected_input",
        "dead_lettered",
        "indeterminate",
    ]
