"""Secrets and PII through a real worker: a run with ``SipAuthPassword``, ``To``, ``From`` and
``CallTo`` set (applied, failed and dead-lettered, refused by the intake, and three hostile
messages published straight to the apply queue) leaves none of them in clear in the dead-letter
queue, the worker's log or a ``pg_dump`` of the ledger (issue 13, "Secrets")."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from kombu.connection import Connection

from tests.intake.wire import Letter, publish_raw, take_dead_letters
from tests.support.e2e import action_for, wait_for_outcome
from workers.broker.sealing import BODY_HEADER, SEALED_PREFIX, keyring, unseal_message
from workers.broker.topology import (
    APPLY_EXCHANGE,
    APPLY_ROUTING_KEY,
    APPLY_TASK_NAME,
    OUTCOME_HEADER,
    REJECT_CODE_HEADER,
)
from workers.core.action import Action, ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

pytestmark = pytest.mark.integration

PASSWORD = "sip-pw-4711-never-in-clear"
TO = "+15557770101"
FROM = "+15557770102"
CALL_TO = "+15557770103"
CALL_FROM = "+15557770104"
CLEAR = (PASSWORD, TO, FROM, CALL_TO, CALL_FROM)
DEAD_LETTER_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "DEAD_LETTER_KEY": DEAD_LETTER_KEY, "LOG_FORMAT": "json"}


@pytest.fixture(scope="module")
def run(worker_env: dict[str, str]) -> Iterator[WorkerProcess]:
    with WorkerProcess(worker_env, pool="threads", concurrency=4) as process:
        yield process


def _conference(action: Action) -> Action:
    params = {"to": TO, "from_": FROM, "sip_auth_password": PASSWORD, "sip_auth_username": "alice"}
    return Action(
        action.action_id, ActionKind.CONFERENCE, action.workspace_sid, action.reservation_sid,
        task_sid=action.task_sid, params=params,
    )  # fmt: skip


def _publish_to_apply(broker_url: str, body: bytes, content_type: str, headers: dict[str, Any]) -> None:
    """What anyone with broker credentials can do: publish straight to the apply queue."""
    with Connection(broker_url) as connection:
        producer = connection.Producer()
        producer.publish(
            body,
            exchange=APPLY_EXCHANGE,
            routing_key=APPLY_ROUTING_KEY,
            content_type=content_type,
            content_encoding="utf-8" if content_type == "application/json" else "binary",
            headers=headers,
            delivery_mode=2,
        )


def _task_headers(task: str) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0, "argsrepr": f"({PASSWORD!r},)"}


def _wait_letters(broker_url: str, count: int, timeout: float = 45.0) -> list[Letter]:
    taken: list[Letter] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and time.monotonic() < deadline:
        taken.extend(take_dead_letters(broker_url))
        time.sleep(0.1)
    time.sleep(0.5)
    taken.extend(take_dead_letters(broker_url))
    return taken


def test_no_secret_or_pii_in_clear_in_the_dead_letters_the_log_or_the_database(
    run: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str, db_url: str
) -> None:
    take_dead_letters(broker_url)
    reservation = admin.create_reservation()
    applied = _conference(action_for(reservation))
    # A reservation TaskRouter does not know: 404, failed, kept in reservations.dead for redrive.
    failed = Action(
        uuid.uuid4(), ActionKind.CALL, reservation.workspace_sid, "WR" + "e" * 32,
        task_sid=reservation.task_sid, params={"call_from": CALL_FROM, "call_to": CALL_TO, "call_url": "https://example.test/twiml"},
    )  # fmt: skip
    intake_refused = {
        **applied.to_message(),
        "action_id": str(uuid.uuid4()),
        "params": {"to": TO, "from_": FROM, "CallTo": CALL_TO, "SipAuthPassword": PASSWORD},
    }
    publish_raw(broker_url, json.dumps(applied.to_message()).encode(), routing_key="action.conference")
    publish_raw(broker_url, json.dumps(failed.to_message()).encode(), routing_key="action.call")
    publish_raw(broker_url, json.dumps(intake_refused).encode(), routing_key="action.conference")
    # Straight to the apply queue: an unregistered task, an untrusted content type (pickle), and
    # our task with a message that breaks the schema (the applier refuses it as rejected_input).
    hostile = [{"SipAuthPassword": PASSWORD, "To": TO, "From": FROM, "CallTo": CALL_TO}]
    _publish_to_apply(
        broker_url, json.dumps([hostile, {}, {}]).encode(), "application/json", _task_headers("evil")
    )
    pickled = pickle.dumps([hostile, {}, {}])
    _publish_to_apply(broker_url, pickled, "application/x-python-serialize", _task_headers(APPLY_TASK_NAME))
    skipped = {**applied.to_message(), "action_id": str(uuid.uuid4()), "SipAuthPassword": PASSWORD}
    skipped["params"] = {"to": TO, "from_": FROM, "sip_auth_password": PASSWORD, "call_to": CALL_TO}
    body = json.dumps([[skipped], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    _publish_to_apply(broker_url, body.encode(), "application/json", _task_headers(APPLY_TASK_NAME))

    assert wait_for_outcome(ledger, applied.action_id).outcome == "applied"
    assert wait_for_outcome(ledger, failed.action_id).outcome == "failed"
    letters = _wait_letters(broker_url, 5)
    time.sleep(0.3)
    log = run.log()
    dump = subprocess.run(
        ["pg_dump", "--data-only", db_url], check=True, capture_output=True, text=True
    ).stdout

    for value in CLEAR:
        for letter in letters:
            assert value.encode() not in letter.body, letter
            assert value not in json.dumps(letter.headers, default=str), letter
        assert value not in log
        assert value not in dump
    assert len(letters) == 5, [letter.headers for letter in letters]
    shapes = sorted((letter.headers[OUTCOME_HEADER], letter.headers[BODY_HEADER]) for letter in letters)
    assert shapes == [
        ("failed", "sealed"),
        ("rejected_input", "digest"),
        ("rejected_input", "digest"),
        ("rejected_input", "masked"),
        ("rejected_input", "masked"),
    ]
    codes = sorted(str(letter.headers.get(REJECT_CODE_HEADER)) for letter in letters)
    assert "unregistered_task" in codes
    assert "content_type" in codes
    digests = {letter.json()["body_sha256"] for letter in letters if letter.headers[BODY_HEADER] == "digest"}
    assert hashlib.sha256(pickled).hexdigest() in digests
    # The failed action's dead letter is sealed, and unseals to the message that was sent.
    (sealed,) = [letter for letter in letters if letter.headers[BODY_HEADER] == "sealed"]
    kept = sealed.json()
    assert kept["params"]["call_to"].startswith(SEALED_PREFIX)
    assert kept["params"]["call_url"] == "https://example.test/twiml"  # not sensitive: in clear
    assert unseal_message(kept, keyring(DEAD_LETTER_KEY)) == failed.to_message()
    # Celery's own refusals never printed the bodies; ours said what it refused, by digest.
    assert "Received unregistered task" not in log
    assert "full contents of the message" not in log
    assert log.count("refused a message on the apply queue") == 2
