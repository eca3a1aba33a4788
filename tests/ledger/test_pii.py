"""PII is stored only as keyed hashes, and SipAuthPassword nowhere: not in any table, not in logs."""

from __future__ import annotations

import logging
import subprocess

import pytest

from tests.ledger.conftest import PII_KEY, make_action
from workers.core.action import ActionKind
from workers.core.redaction import pii_digest
from workers.ledger.events import RejectedInput, Settle
from workers.ledger.models import Outcome
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter

CLEAR = {
    "to": "+15551110001",
    "from_": "+15551110002",
    "sip_auth_username": "alice-sip-user",
}
CALL = {"call_to": "+15551110003", "call_from": "+15551110004"}
DEQUEUE = {"dequeue_to": "+15551110005", "dequeue_from": "+15551110006"}
PASSWORD = "s3cret-sip-passw0rd"


def test_no_pii_or_secret_in_any_table_or_log(
    writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conference = make_action(
        action=ActionKind.CONFERENCE, params={**CLEAR, "sip_auth_password": PASSWORD, "timeout": 20}
    )
    call = make_action(action=ActionKind.CALL, params={**CALL, "call_url": "https://example.test/twiml"})
    dequeue = make_action(action=ActionKind.DEQUEUE, params=DEQUEUE)
    for action in (conference, call, dequeue):
        writer.receive(action)
        writer.append(Settle(action.action_id, Outcome.FAILED))
    writer.append(
        RejectedInput(
            {"action_id": "x", "params": {"To": "+15551110007", "SipAuthPassword": PASSWORD}}, "bad"
        )
    )
    dump = subprocess.run(
        ["pg_dump", "--data-only", db_url], check=True, capture_output=True, text=True
    ).stdout
    clear_values = [*CLEAR.values(), *CALL.values(), *DEQUEUE.values(), "+15551110007"]
    for value in [*clear_values, PASSWORD]:
        assert value not in dump
        assert value not in caplog.text
    for value in clear_values:
        assert pii_digest(value, PII_KEY) in dump
    assert "https://example.test/twiml" in dump  # what is not PII is kept
    stored = reader.action(conference.action_id)
    assert stored is not None
    assert stored.params == {
        "to": pii_digest(CLEAR["to"], PII_KEY),
        "from_": pii_digest(CLEAR["from_"], PII_KEY),
        "sip_auth_username": pii_digest(CLEAR["sip_auth_username"], PII_KEY),
        "timeout": 20,
    }
