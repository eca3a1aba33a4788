"""The plain-JSON intake end to end: messages published with a plain AMQP client (py-amqp, not our
producer) into ``reservations`` reach a real Celery worker, a real ledger and the emulator; bad
input lands in ``reservations.dead`` with its reason and a ledger row, and never blocks the queue."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.intake.messages import example, fresh, mutated_messages, valid_messages
from tests.intake.wire import (
    Letter,
    kept_of,
    publish_json,
    publish_raw,
    take_dead_letters,
    wait_for_dead_letters,
)
from tests.support.e2e import wait_for_outcome
from workers.broker.intake import DEFAULT_PREFETCH
from workers.broker.sealing import digest_only
from workers.broker.topology import ACTION_ID_HEADER, OUTCOME_HEADER, REASON_HEADER, REJECT_CODE_HEADER
from workers.core.validation import Accepted, decide
from workers.ledger.models import Cursor, LedgerRow
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.processes import WorkerProcess

PII = "+15550100003"


def addressed(name: str, reservation: ReservationInfo, **changes: Any) -> dict[str, Any]:
    """An example message, pointed at ``reservation``, with a new action_id."""
    message = fresh(example(name), **changes)
    message["workspace_sid"] = reservation.workspace_sid
    message["reservation_sid"] = reservation.sid
    if "task_sid" in message:
        message["task_sid"] = reservation.task_sid
    if "worker_sid" in message:
        message["worker_sid"] = reservation.worker_sid
    return message


# LedgerReader.history shows a row only once every older ledger writer has ended (stable paging),
# so the tests read it with a cursor and wait for what they expect.
VISIBLE_TIMEOUT = 15.0


def cursor_now(ledger: LedgerReader) -> Cursor | None:
    rows = ledger.history(limit=100_000)
    return rows[-1].cursor if rows else None


def rejected_after(ledger: LedgerReader, cursor: Cursor | None) -> list[LedgerRow]:
    return [event for event in ledger.history(after=cursor, limit=100_000) if event.kind == "rejected_input"]


def wait_rows(read: Callable[[], list[LedgerRow]], count: int) -> list[LedgerRow]:
    """``read()`` once it returns at least ``count`` rows, and a moment later (to see any extra)."""
    deadline = time.monotonic() + VISIBLE_TIMEOUT
    while len(read()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    return read()


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        ("accept", "pending", "accepted"),
        ("accept-worker-scoped", "pending", "accepted"),
        ("reject", "pending", "rejected"),
        ("wrapup", "accepted", "wrapping"),
        ("complete", "accepted", "completed"),
        ("conference", "pending", "accepted"),
        ("dequeue", "pending", "accepted"),
        ("call", "pending", "accepted"),
        ("redirect", "pending", "accepted"),
        ("update", "pending", "accepted"),
    ],
)
def test_a_valid_message_of_each_action_published_with_plain_amqp_is_applied(
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
    name: str,
    start: str,
    end: str,
) -> None:
    reservation = admin.create_reservation(status=start)
    message = addressed(name, reservation)
    publish_json(broker_url, message)
    record = wait_for_outcome(ledger, uuid.UUID(message["action_id"]))
    assert record.outcome == "applied"
    assert admin.reservation(reservation.sid).status == end
    rows = wait_rows(lambda: ledger.history(action_id=uuid.UUID(message["action_id"])), 3)
    # One receipt: the apply task finds the one the intake recorded.
    assert [row.kind for row in rows] == ["received", "intent", "transition"]


def test_a_copy_of_a_settled_action_is_acknowledged_without_a_second_call(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    reservation = admin.create_reservation()
    message = addressed("accept", reservation)
    action_id = uuid.UUID(message["action_id"])
    publish_json(broker_url, message)
    assert wait_for_outcome(ledger, action_id).outcome == "applied"
    calls_before = admin.reservation_counts(reservation.sid).calls

    publish_json(broker_url, message)  # a producer's retry after a lost confirm, say
    marker = addressed("accept", admin.create_reservation())
    publish_json(broker_url, marker)
    wait_for_outcome(ledger, uuid.UUID(marker["action_id"]))
    deadline = time.monotonic() + VISIBLE_TIMEOUT
    while "a redelivery or a duplicate" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.05)

    log = [line for line in worker.log().splitlines() if message["action_id"] in line]
    assert any("applied (already settled: a redelivery or a duplicate)" in line for line in log)
    assert admin.reservation_counts(reservation.sid).calls == calls_before
    rows = wait_rows(lambda: ledger.history(action_id=action_id), 3)
    assert [row.kind for row in rows] == ["received", "intent", "transition"]


def _call(**changes: Any) -> bytes:
    return json.dumps(fresh(example("call"), **changes)).encode()


BAD_INPUT: list[tuple[str, bytes, dict[str, Any], str]] = [
    ("malformed JSON", b'{"schema": "reservation-action/v1", ', {}, "invalid_json"),
    ("not UTF-8", b'{"producer": "\xc3\x28"}', {}, "not_utf8"),
    ("not an object", b'["accept"]', {}, "not_an_object"),
    ("wrong content type", _call(), {"content_type": "text/plain"}, "content_type"),
    # kombu's "binary" label is accepted for UTF-8 JSON only; other labels are refused.
    ("UTF-16 labelled binary", _call().decode().encode("utf-16"), {"content_encoding": "binary"}, "not_utf8"),
    ("compressed label", _call(), {"content_encoding": "gzip"}, "content_encoding"),
    ("no content type", _call(), {"content_type": None}, "content_type"),
    ("over 64 KiB", _call(correlation_id="c" * 66_000), {}, "too_large"),
    ("unknown action", _call(action="transfer"), {}, "unknown_action"),
    ("missing field", _call(reservation_sid=None), {}, "missing_field"),
    ("bad field", _call(expected_status="asleep"), {}, "invalid_field"),
    ("bad SID", _call(task_sid="WT" + "g" * 32), {}, "bad_sid"),
    (
        "out of range",
        _call(params={"call_from": PII, "call_url": "https://x.example.com/", "call_timeout": 0}),
        {},
        "out_of_range",
    ),
    (
        "unknown field",
        _call(params={"call_from": PII, "call_url": "https://x.example.com/", "CallTo": PII}),
        {},
        "unknown_field",
    ),
    ("another schema", _call(schema="reservation-action/v2"), {}, "unsupported_schema"),
]


@pytest.mark.parametrize(
    ("raw", "properties", "code"), [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_is_dead_lettered_with_its_reason_and_recorded_and_the_queue_moves_on(
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
    raw: bytes,
    properties: dict[str, Any],
    code: str,
) -> None:
    take_dead_letters(broker_url)
    cursor = cursor_now(ledger)
    publish_raw(broker_url, raw, **properties)
    # A valid message right behind it is applied: the bad one blocked nothing.
    reservation = admin.create_reservation()
    valid = addressed("accept", reservation)
    publish_json(broker_url, valid)
    assert wait_for_outcome(ledger, uuid.UUID(valid["action_id"])).outcome == "applied"

    (letter,) = wait_for_dead_letters(broker_url, 1)
    # Never the bytes as they came (they may hold secrets): the object masked, else a digest.
    content = properties.get("content_type", "application/json"), properties.get("content_encoding")
    assert letter.json() == kept_of(raw, *content)
    assert PII.encode() not in letter.body
    assert letter.headers[OUTCOME_HEADER] == "rejected_input"
    assert letter.headers[REJECT_CODE_HEADER] == code
    assert letter.headers[REASON_HEADER].startswith(f"{code}: ")
    assert PII not in letter.headers[REASON_HEADER]
    rows = wait_rows(lambda: rejected_after(ledger, cursor), 1)
    assert [row.detail for row in rows] == [letter.headers[REASON_HEADER]]
    assert PII not in json.dumps(rows[0].params)  # PII only as keyed hashes
    if code == "unknown_field":
        assert rows[0].params is not None
        assert rows[0].params["call_from"].startswith("hmac-sha256:")
        assert rows[0].action_id is not None
        assert letter.headers[ACTION_ID_HEADER] == str(rows[0].action_id)
    assert "Traceback" not in worker.log()


def test_kombus_compression_header_does_not_make_it_drop_the_message(
    worker: WorkerProcess, ledger: LedgerReader, broker_url: str
) -> None:
    """kombu would decompress a body with a ``compression`` header, and drop it if it cannot."""
    take_dead_letters(broker_url)
    raw = _call()
    publish_raw(broker_url, raw, headers={"compression": "application/x-gzip"})
    (letter,) = wait_for_dead_letters(broker_url, 1)
    assert letter.json() == digest_only(raw, "application/json")  # kombu's failure leaves no object
    assert letter.json()["body_sha256"] == hashlib.sha256(raw).hexdigest()
    assert letter.headers[REJECT_CODE_HEADER] == "content_encoding"


# -- property: every message, through the real broker and worker, has exactly one fate -----------

MESSAGES = st.one_of(valid_messages(), mutated_messages())


def _kept_if_refused(raw: bytes) -> Any:
    """What the dead letter of ``raw`` holds, if the intake refuses it (None if it accepts it)."""
    if isinstance(decide(raw, "application/json"), Accepted):
        return None
    return kept_of(raw)


def _fate(
    ledger: LedgerReader, broker_url: str, raw: bytes, action_id: uuid.UUID | None, letters: list[Letter]
) -> str:
    kept = _kept_if_refused(raw)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        letters.extend(take_dead_letters(broker_url))
        if any(letter.json() == kept for letter in letters):
            return "rejected"
        if action_id is not None:
            record = ledger.action(action_id)
            if record is not None and record.outcome not in (None, "rejected_input"):
                return "settled"
        time.sleep(0.05)
    raise AssertionError("the message had no fate in 30 s")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(message=MESSAGES)
def test_generated_messages_through_the_broker_each_have_exactly_one_fate(
    worker: WorkerProcess, ledger: LedgerReader, broker_url: str, message: dict[str, Any]
) -> None:
    action_id: uuid.UUID | None = None
    try:
        if isinstance(message.get("action_id"), str):
            uuid.UUID(message["action_id"])
            action_id = uuid.uuid4()  # unique per example, whatever hypothesis drew
            message["action_id"] = str(action_id)
    except ValueError:
        action_id = None
    raw = json.dumps(message).encode()
    take_dead_letters(broker_url)
    cursor = cursor_now(ledger)
    letters: list[Letter] = []
    publish_raw(broker_url, raw, routing_key="action.any")
    fate = _fate(ledger, broker_url, raw, action_id, letters)
    time.sleep(0.2)  # time enough for a second fate to show, if there were one
    letters.extend(take_dead_letters(broker_url))
    rejected_letters = [
        letter for letter in letters if letter.headers.get(OUTCOME_HEADER) == "rejected_input"
    ]
    if fate == "rejected":
        new_rows = len(wait_rows(lambda: rejected_after(ledger, cursor), 1))
        assert [letter.json() for letter in rejected_letters] == [_kept_if_refused(raw)]
        assert new_rows == 1
        if action_id is not None:
            record = ledger.action(action_id)
            assert record is None or record.outcome == "rejected_input"
    else:
        assert rejected_letters == []
        assert rejected_after(ledger, cursor) == []


def test_the_intake_declares_its_wiring_and_consumes_with_a_bounded_prefetch(
    worker: WorkerProcess, broker_url: str
) -> None:
    ctl = shutil.which("rabbitmqctl")
    vhost = broker_url.rsplit("/", 1)[1]
    if ctl is None or not vhost:
        pytest.skip("needs rabbitmqctl and the test's own vhost")
    queues = subprocess.run(
        [ctl, "-q", "list_queues", "-p", vhost, "name", "arguments"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    actions = next(line for line in queues.splitlines() if line.startswith("reservations.actions"))
    assert "quorum" in actions
    assert "reservations.dlx" in actions
    assert any(line.startswith("reservations.dead") for line in queues.splitlines())
    consumers = subprocess.run(
        [ctl, "-q", "list_consumers", "-p", vhost, "queue_name", "prefetch_count"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    intake = [line.split() for line in consumers.splitlines() if line.startswith("reservations.actions")]
    assert [fields[1] for fields in intake] == [str(DEFAULT_PREFETCH)]


def _poison(kind: str, n: int) -> bytes:
    message = json.dumps(fresh(example("accept")))
    number = "9" * 5000 if kind == "huge" else "1e400"
    return ("{" + f'"x{n}": {number}, ' + message[1:]).encode()


def test_fifty_poison_messages_each_reach_the_dead_letter_queue_once_and_delay_nothing_behind_them(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    """A 5,000-digit integer made decide() raise and 1e400 made the ledger refuse the row: each was
    requeued about twenty times with pauses up to 15 s, and valid actions behind 42 of them waited
    26 to 41 s. Now each is refused on its first delivery."""
    take_dead_letters(broker_url)
    cursor = cursor_now(ledger)

    def latency_of_one_valid_action() -> float:
        valid = addressed("accept", admin.create_reservation())
        started = time.monotonic()
        publish_json(broker_url, valid)
        wait_for_outcome(ledger, uuid.UUID(valid["action_id"]))
        return time.monotonic() - started

    normal = max(latency_of_one_valid_action() for _ in range(3))
    poison = [_poison("huge" if n % 2 else "infinite", n) for n in range(50)]
    for body in poison:
        publish_raw(broker_url, body)
    behind = latency_of_one_valid_action()
    assert behind < normal + 2.0, (behind, normal)

    letters = wait_for_dead_letters(broker_url, 50)
    # each once, kept as its digest (a body that does not parse may hold a secret)
    assert sorted(letter.json()["body_sha256"] for letter in letters) == sorted(
        hashlib.sha256(body).hexdigest() for body in poison
    )
    assert {letter.headers[REJECT_CODE_HEADER] for letter in letters} == {"out_of_range"}
    rows = wait_rows(lambda: rejected_after(ledger, cursor), 50)
    assert len(rows) == 50
    assert all(row.detail and row.detail.startswith("out_of_range: ") for row in rows)
    assert "will be redelivered" not in worker.log()
