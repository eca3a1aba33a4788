"""When the ledger cannot take an event: 503 (Twilio may retry, reconcile recovers), never a 204
for what is not durable; one bad transition in a batch fails only its own request."""

from __future__ import annotations

import pytest

from tests.audit.support import TestClient
from tests.events.conftest import PUBLIC, TOKEN, config, transitions
from workers.core.sids import new_sid
from workers.errors import LedgerError
from workers.events.api import CALLBACK_PATH, create_app
from workers.events.recording import GroupCommitter
from workers.ledger.events import Transition
from workers.ledger.models import Source
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.emulator.events import sign_form
from workers.testing.emulator.process import free_port

pytestmark = pytest.mark.integration


def test_a_ledger_that_does_not_answer_gets_503_not_204() -> None:
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/reservations"
    app = create_app(config(nowhere, pool_timeout=0.5))
    sid = new_sid("WR")
    form = {
        "EventType": "reservation.accepted",
        "ResourceType": "Reservation",
        "ResourceSid": sid,
        "Sid": "EV1",
    }
    with TestClient(app) as api:
        signature = sign_form(f"{PUBLIC}{CALLBACK_PATH}", form, TOKEN)
        answer = api.post(CALLBACK_PATH, data=form, headers={"X-Twilio-Signature": signature})
        assert answer.status_code == 503
        assert answer.json()["error"] == "unavailable"
        assert api.get("/readyz").status_code == 503
        assert api.get("/healthz").status_code == 200


def test_one_bad_transition_fails_only_its_own_request(
    writer: PostgresLedgerWriter, reader: LedgerReader
) -> None:
    group = GroupCommitter(writer, batch_max=50, threads=1)
    good = [new_sid("WR") for _ in range(5)]
    futures = [
        group.submit(Transition(sid, None, "accepted", None, None, source=Source.EVENT)) for sid in good[:2]
    ]
    bad = group.submit(Transition(new_sid("WR"), None, "exploded", None, None, source=Source.EVENT))
    futures += [
        group.submit(Transition(sid, None, "accepted", None, None, source=Source.EVENT)) for sid in good[2:]
    ]
    group.start()  # all six are queued: they go out as one batch
    try:
        assert all(future.result(timeout=30).appended for future in futures)
        with pytest.raises(LedgerError):
            bad.result(timeout=30)
    finally:
        group.stop()
    assert all(len(transitions(reader, sid)) == 1 for sid in good)
