"""Redrive against the real broker and ledger, without a worker: selection, reporting, dry run.

No worker consumes the apply queue here, so whatever redrive publishes stays visible in it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from kombu.connection import Connection

from tests.audit.support import eventually
from tests.replay.conftest import cli, json_lines
from workers.broker.dead_letters import publish_dead_letter
from workers.broker.topology import OUTCOME_HEADER, apply_queue
from workers.core.action import Action, ActionKind
from workers.core.planner import Outcome
from workers.core.sids import new_sid
from workers.ledger.events import Settle
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.replay.redrive import (
    REDRIVE_PRODUCER,
    Decision,
    RedriveFilters,
    Verdict,
    dead_letters,
    parse_dead_letter,
    redrive,
)


def an_action(**fields: Any) -> Action:
    return Action(
        uuid.uuid4(),
        ActionKind.ACCEPT,
        new_sid("WS"),
        new_sid("WR"),
        task_sid=new_sid("WT"),
        correlation_id=f"corr-{uuid.uuid4().hex[:6]}",
        producer="tests",
        params=fields.pop("params", {}),
        **fields,
    )


def settle(writer: PostgresLedgerWriter, action: Action, outcome: Outcome, code: int | None = None) -> None:
    writer.receive(action)
    writer.append(Settle(action.action_id, outcome, twilio_error_code=code))


def dead_letter(app: Any, action: Action, outcome: Outcome) -> None:
    publish_dead_letter(
        app.runtime.publishers,
        action.to_message(),
        "test",
        action_id=str(action.action_id),
        extra_headers={OUTCOME_HEADER: outcome.value},
    )


def apply_messages(broker_url: str) -> int:
    """How many messages wait in the apply queue (declared, with its arguments, if need be)."""
    with Connection(broker_url) as conn:
        _name, count, _consumers = apply_queue()(conn.channel()).queue_declare()
        return int(count)


@pytest.fixture
def since() -> str:
    return datetime.now(UTC).isoformat()


def test_dry_run_lists_and_changes_nothing(
    celery_app: Any,
    ledger: LedgerReader,
    writer: PostgresLedgerWriter,
    worker_env: dict[str, str],
    broker_url: str,
    since: str,
) -> None:
    dead = an_action(params={"to": "+15550001234"})
    settle(writer, dead, Outcome.DEAD_LETTERED)
    dead_letter(celery_app, dead, Outcome.DEAD_LETTERED)
    lost = an_action()
    settle(writer, lost, Outcome.FAILED, code=20001)
    applied = an_action()
    settle(writer, applied, Outcome.APPLIED)
    before = apply_messages(broker_url)

    result = cli(worker_env, "replay", "redrive", "--dry-run", "--since", since, "--json")
    decisions = {row["action_id"]: row for row in json_lines(result)}
    assert result.exit_code == 1, result.output  # one selected action cannot be redriven
    assert decisions[str(dead.action_id)]["verdict"] == "would_redrive"
    assert decisions[str(lost.action_id)]["verdict"] == "not_redrivable"
    assert "not in reservations.dead" in decisions[str(lost.action_id)]["reason"]
    assert str(applied.action_id) not in decisions
    assert "dry run:" in result.stderr

    # Nothing changed: the ledger, the dead letter (still there, whole), the apply queue.
    record = ledger.action(dead.action_id)
    assert record is not None
    assert (record.outcome, record.redrives) == ("dead_lettered", 0)
    kinds = eventually(
        lambda: [e.kind for e in ledger.history(action_id=dead.action_id)], lambda k: len(k) >= 2
    )
    assert kinds == ["received", "outcome"]
    with dead_letters(broker_url) as letters:
        kept = [letter for letter in letters if letter.action_id == dead.action_id]
    assert len(kept) == 1
    assert kept[0].body is not None
    assert kept[0].body["params"] == {"to": "+15550001234"}
    assert apply_messages(broker_url) == before


def test_redrive_publishes_a_linked_copy_then_removes_the_dead_letter(
    celery_app: Any, ledger: LedgerReader, writer: PostgresLedgerWriter, broker_url: str, since: str
) -> None:
    dead = an_action()
    settle(writer, dead, Outcome.DEAD_LETTERED)
    dead_letter(celery_app, dead, Outcome.DEAD_LETTERED)
    other = an_action()
    settle(writer, other, Outcome.DEAD_LETTERED)
    dead_letter(celery_app, other, Outcome.DEAD_LETTERED)
    published: list[Action] = []
    filters = RedriveFilters(reservation_sid=dead.reservation_sid)

    with dead_letters(broker_url) as letters:
        decisions = redrive(ledger, writer, letters, published.append, filters)
    mine = [d for d in decisions if d.action_id == dead.action_id]
    assert [d.verdict for d in mine] == [Verdict.REDRIVEN]
    (copy,) = published
    assert copy.action_id == mine[0].new_action_id != dead.action_id
    assert copy.producer == REDRIVE_PRODUCER
    assert (copy.correlation_id, copy.reservation_sid, copy.action) == (
        dead.correlation_id,
        dead.reservation_sid,
        dead.action,
    )
    redrive_row = eventually(lambda: ledger.history(action_id=dead.action_id, kind="redrive"), bool)
    assert [row.detail for row in redrive_row] == [f"redriven as {copy.action_id}"]
    # The other reservation's dead letter was not selected: it stays.
    assert {d.verdict for d in decisions if d.action_id == other.action_id} == {Verdict.LEFT_IN_QUEUE}
    with dead_letters(broker_url) as letters:
        waiting = {letter.action_id for letter in letters}
    assert dead.action_id not in waiting
    assert other.action_id in waiting

    # Had the acknowledgement been lost, the stale dead letter would not be sent a second time.
    dead_letter(celery_app, dead, Outcome.DEAD_LETTERED)
    with dead_letters(broker_url) as letters:
        again = redrive(ledger, writer, letters, published.append, filters)
    stale = [d for d in again if d.action_id == dead.action_id]
    assert [d.verdict for d in stale] == [Verdict.LEFT_IN_QUEUE]
    assert "already redriven" in stale[0].reason
    assert len(published) == 1


def test_a_failed_publish_keeps_the_dead_letter_and_records_nothing(
    celery_app: Any, ledger: LedgerReader, writer: PostgresLedgerWriter, broker_url: str
) -> None:
    dead = an_action()
    settle(writer, dead, Outcome.FAILED)
    dead_letter(celery_app, dead, Outcome.FAILED)

    def refuse(_action: Action) -> None:
        raise ConnectionError("the broker did not confirm")

    with (
        pytest.raises(ConnectionError),
        dead_letters(broker_url) as letters,
    ):
        redrive(ledger, writer, letters, refuse, RedriveFilters(reservation_sid=dead.reservation_sid))
    record = ledger.action(dead.action_id)
    assert record is not None
    assert (record.outcome, record.redrives) == ("failed", 0)
    with dead_letters(broker_url) as letters:
        assert dead.action_id in {letter.action_id for letter in letters}


def test_error_code_and_outcome_filters_select_from_the_ledger(
    celery_app: Any, ledger: LedgerReader, writer: PostgresLedgerWriter, broker_url: str, since: str
) -> None:
    wanted = an_action()
    settle(writer, wanted, Outcome.FAILED, code=20404)
    dead_letter(celery_app, wanted, Outcome.FAILED)
    unwanted = an_action()
    settle(writer, unwanted, Outcome.FAILED, code=20001)
    dead_letter(celery_app, unwanted, Outcome.FAILED)
    filters = RedriveFilters(
        outcomes=frozenset({"failed"}), since=datetime.fromisoformat(since), twilio_error_code=20404
    )

    def dry_run() -> list[Decision]:
        with dead_letters(broker_url) as letters:
            return redrive(ledger, writer, letters, lambda _a: None, filters, dry_run=True)

    # The error code is looked up in the ledger's history, which shows a row a moment after commit.
    decisions = eventually(dry_run, lambda found: any(d.verdict == Verdict.WOULD_REDRIVE for d in found))
    by_id = {d.action_id: d.verdict for d in decisions}
    assert by_id[wanted.action_id] == Verdict.WOULD_REDRIVE
    assert by_id[unwanted.action_id] == Verdict.LEFT_IN_QUEUE


def test_dead_letters_are_parsed_from_our_messages_and_from_celery_task_messages() -> None:
    message = an_action().to_message()
    assert parse_dead_letter(b'{"a": 1}', {}) == ({"a": 1}, None)
    body, problem = parse_dead_letter(b"not json", {})
    assert body is None
    assert problem is not None
    celery_body = json.dumps([[message], {}, {"callbacks": None}]).encode()
    assert parse_dead_letter(celery_body, {"task": "reservations.apply"}) == (message, None)
    assert parse_dead_letter(b"[1, 2]", {})[0] is None


def test_dead_letters_the_ledger_never_settled_are_redriven_unlinked(
    celery_app: Any, ledger: LedgerReader, writer: PostgresLedgerWriter, broker_url: str
) -> None:
    """The ledger was down when the action was dead-lettered: the message is all there is."""
    orphan = an_action()
    dead_letter(celery_app, orphan, Outcome.DEAD_LETTERED)
    malformed = {"schema": "reservation-action/v1", "action_id": str(uuid.uuid4()), "action": "dance"}
    publish_dead_letter(
        celery_app.runtime.publishers,
        {**malformed, "reservation_sid": orphan.reservation_sid},
        "malformed",
        action_id=malformed["action_id"],
        extra_headers={OUTCOME_HEADER: Outcome.REJECTED_INPUT.value},
    )
    published: list[Action] = []
    with dead_letters(broker_url) as letters:
        decisions = redrive(
            ledger, writer, letters, published.append, RedriveFilters(reservation_sid=orphan.reservation_sid)
        )
    verdicts = {d.action_id: d for d in decisions if d.reservation_sid == orphan.reservation_sid}
    assert verdicts[orphan.action_id].verdict == Verdict.REDRIVEN
    assert "not linked" in verdicts[orphan.action_id].reason
    assert [a.reservation_sid for a in published] == [orphan.reservation_sid]
    left = verdicts[uuid.UUID(malformed["action_id"])]
    assert left.verdict == Verdict.LEFT_IN_QUEUE
    assert "not a valid action" in left.reason
    # With a filter only the ledger can answer, an unsettled dead letter is not selected.
    again = an_action()
    dead_letter(celery_app, again, Outcome.DEAD_LETTERED)
    filters = RedriveFilters(reservation_sid=again.reservation_sid, twilio_error_code=20001)
    with dead_letters(broker_url) as letters:
        decisions = redrive(ledger, writer, letters, published.append, filters, dry_run=True)
    assert {d.verdict for d in decisions if d.action_id == again.action_id} == {Verdict.LEFT_IN_QUEUE}


def test_redrive_help_explains_itself(worker_env: dict[str, str]) -> None:
    text = cli(worker_env, "replay", "redrive", "--help").output
    for phrase in (
        "NEW action_id",
        "not\n    redrivable",
        "--dry-run",
        "reservations.dead",
        "CELERY_BROKER_URL",
    ):
        assert phrase.split()[0] in text
    assert "acknowledged (removed) only after" in text
