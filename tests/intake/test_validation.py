"""The pure fate function: every bad-input class gets its code and a reason that names the field
without quoting a value; generated and mutated messages never make it raise."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.intake.messages import JSON_VALUES, example, fresh, mutated_messages, valid_messages
from workers.core import validation
from workers.core.validation import (
    Accepted,
    RejectCode,
    Rejected,
    decide,
    readable,
    validator,
)

JSON = "application/json"
PII = "+15550100003"


def body(message: Any) -> bytes:
    return json.dumps(message).encode("utf-8")


def rejected(raw: bytes, content_type: str | None = JSON, encoding: str | None = None) -> Rejected:
    fate = decide(raw, content_type, encoding)
    assert isinstance(fate, Rejected), fate
    return fate


def test_a_valid_message_is_accepted_with_its_action() -> None:
    message = example("call")
    fate = decide(body(message), JSON)
    assert isinstance(fate, Accepted)
    assert str(fate.action.action_id) == message["action_id"]
    assert fate.action.update_arguments()["instruction"] == "call"


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        (JSON, None),
        (JSON, "utf-8"),
        ("application/json; charset=utf-8", "UTF-8"),
        ("Application/JSON", ""),
        # kombu's label for bytes published with a content type (kombu.messaging.Producer._prepare)
        (JSON, "binary"),
        (JSON, " Binary "),
    ],
)
def test_content_type_and_encoding_spellings_that_are_accepted(
    content_type: str, encoding: str | None
) -> None:
    assert isinstance(decide(body(example("accept")), content_type, encoding), Accepted)


CALL = example("call")

BAD_INPUT: list[tuple[str, bytes, str | None, str | None, RejectCode, str]] = [
    ("malformed JSON", b'{"schema": ', JSON, None, RejectCode.INVALID_JSON, "line 1"),
    ("not UTF-8", b'{"a": "\xff\xfe"}', JSON, None, RejectCode.NOT_UTF8, "not UTF-8"),
    ("a JSON array", b"[1, 2]", JSON, None, RejectCode.NOT_AN_OBJECT, "array"),
    ("a JSON string", b'"accept"', JSON, None, RejectCode.NOT_AN_OBJECT, "string"),
    ("wrong content type", body(CALL), "text/plain", None, RejectCode.CONTENT_TYPE, "text/plain"),
    ("no content type", body(CALL), None, None, RejectCode.CONTENT_TYPE, "no content type"),
    (
        "a charset not utf-8",
        body(CALL),
        "application/json; charset=latin-1",
        None,
        RejectCode.CONTENT_TYPE,
        "utf-8",
    ),
    ("compressed", body(CALL), JSON, "gzip", RejectCode.CONTENT_ENCODING, "gzip"),
    ("another charset's label", body(CALL), JSON, "latin-1", RejectCode.CONTENT_ENCODING, "latin-1"),
    # The label is only a label: "binary" bytes must still be UTF-8 (json.loads alone reads UTF-16).
    (
        "UTF-16 labelled binary",
        json.dumps(CALL).encode("utf-16"),
        JSON,
        "binary",
        RejectCode.NOT_UTF8,
        "UTF-8",
    ),
    ("a BOM labelled binary", b"\xef\xbb\xbf" + body(CALL), JSON, "binary", RejectCode.INVALID_JSON, "BOM"),
    (
        "over 64 KiB",
        body(fresh(CALL, correlation_id="x" * 70_000)),
        JSON,
        None,
        RejectCode.TOO_LARGE,
        "65536",
    ),
    (
        "duplicate keys",
        b'{"action": "accept", "action": "reject"}',
        JSON,
        None,
        RejectCode.INVALID_JSON,
        "duplicate",
    ),
    ("NaN", b'{"n": NaN}', JSON, None, RejectCode.INVALID_JSON, "NaN"),
    ("nested too deeply", b"[" * 20_000 + b"]" * 20_000, JSON, None, RejectCode.INVALID_JSON, "deep"),
    (
        "a NUL in a string",
        body(fresh(CALL, producer="a\x00b")),
        JSON,
        None,
        RejectCode.INVALID_JSON,
        "U+0000",
    ),
    ("a lone surrogate", b'{"producer": "\\ud800"}', JSON, None, RejectCode.INVALID_JSON, "surrogate"),
    (
        "unknown action",
        body(fresh(CALL, action="transfer")),
        JSON,
        None,
        RejectCode.UNKNOWN_ACTION,
        "action:",
    ),
    ("missing action", body(fresh(CALL, action=None)), JSON, None, RejectCode.MISSING_FIELD, '"action"'),
    (
        "missing action_id",
        body(fresh(CALL, action_id=None)),
        JSON,
        None,
        RejectCode.MISSING_FIELD,
        "action_id",
    ),
    (
        "missing instruction parameter",
        body(fresh(CALL, params={"call_from": PII})),
        JSON,
        None,
        RejectCode.MISSING_FIELD,
        '"call_url"',
    ),
    (
        "no task_sid nor worker_sid",
        body(fresh(CALL, task_sid=None)),
        JSON,
        None,
        RejectCode.MISSING_FIELD,
        "task_sid or worker_sid",
    ),
    (
        "bad reservation SID",
        body(fresh(CALL, reservation_sid="WR123")),
        JSON,
        None,
        RejectCode.BAD_SID,
        "reservation_sid",
    ),
    (
        "a task SID as workspace",
        body(fresh(CALL, workspace_sid="WT" + "0" * 32)),
        JSON,
        None,
        RejectCode.BAD_SID,
        "^WS",
    ),
    (
        "bad SID parameter",
        body(fresh(example("reject"), params={"worker_activity_sid": "WK" + "0" * 32})),
        JSON,
        None,
        RejectCode.BAD_SID,
        "params.worker_activity_sid",
    ),
    (
        "out of range",
        body(fresh(CALL, params={**CALL["params"], "call_timeout": 1000})),
        JSON,
        None,
        RejectCode.OUT_OF_RANGE,
        "at most 999",
    ),
    (
        "below range",
        body(fresh(example("conference"), params={"max_participants": 1})),
        JSON,
        None,
        RejectCode.OUT_OF_RANGE,
        "at least 2",
    ),
    ("unknown field", body(fresh(CALL, priority=5)), JSON, None, RejectCode.UNKNOWN_FIELD, '"priority"'),
    (
        "unknown parameter",
        body(fresh(CALL, params={**CALL["params"], "CallFrom": PII})),
        JSON,
        None,
        RejectCode.UNKNOWN_FIELD,
        '"CallFrom"',
    ),
    (
        "a parameter of another action",
        body(fresh(example("accept"), params={"call_url": "https://x.example.com/"})),
        JSON,
        None,
        RejectCode.UNKNOWN_FIELD,
        '"call_url"',
    ),
    (
        "schema v2",
        body(fresh(CALL, schema="reservation-action/v2")),
        JSON,
        None,
        RejectCode.UNSUPPORTED_SCHEMA,
        "v1",
    ),
    ("no schema", body(fresh(CALL, schema=None)), JSON, None, RejectCode.MISSING_FIELD, '"schema"'),
    (
        "null for an optional field",
        body(fresh(CALL, producer=None) | {"producer": None}),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "null",
    ),
    (
        "a string for a boolean",
        body(fresh(CALL, params={**CALL["params"], "call_accept": "true"})),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "boolean",
    ),
    (
        "not_after without offset",
        body(fresh(CALL, not_after="2030-01-01T00:00:00")),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "not_after",
    ),
    (
        "not_after not a date",
        body(fresh(CALL, not_after="2030-02-30T00:00:00Z")),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "date-time",
    ),
    (
        "not_after beyond year 9999 in UTC",
        body(fresh(CALL, not_after="9999-12-31T23:59:00-14:00")),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "date-time",
    ),
    (
        "not_after before year 1 in UTC",
        body(fresh(CALL, not_after="0001-01-01T00:00:00+14:00")),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "date-time",
    ),
    (
        "action_id not a UUID",
        body(fresh(CALL) | {"action_id": "42"}),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "action_id",
    ),
    (
        "a URL that is not http",
        body(fresh(CALL, params={**CALL["params"], "call_url": "ftp://x.example.com/"})),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "call_url",
    ),
    (
        "update with status and instruction",
        body(
            fresh(example("update"), params={"reservation_status": "accepted", "instruction": "conference"})
        ),
        JSON,
        None,
        RejectCode.INVALID_FIELD,
        "exactly one of reservation_status and instruction",
    ),
    (
        "update with an instruction missing its parameter",
        body(fresh(example("update"), params={"instruction": "dequeue"})),
        JSON,
        None,
        RejectCode.MISSING_FIELD,
        '"dequeue_from"',
    ),
    (
        "supervise without a task",
        body(
            fresh(
                example("accept-worker-scoped"),
                action="update",
                params={"instruction": "supervise", "supervisor": "client:sup"},
            )
        ),
        JSON,
        None,
        RejectCode.MISSING_FIELD,
        '"task_sid"',
    ),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "encoding", "code", "fragment"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_each_bad_input_class_has_its_code_and_reason(
    raw: bytes, content_type: str | None, encoding: str | None, code: RejectCode, fragment: str
) -> None:
    fate = rejected(raw, content_type, encoding)
    assert fate.code is code
    assert fragment in fate.reason
    assert fate.text.startswith(f"{code.value}: ")
    assert PII not in fate.text  # reasons name fields, never quote values


def test_what_could_be_read_is_kept_for_the_ledger() -> None:
    message = fresh(CALL, priority=5)
    fate = rejected(body(message))
    assert fate.message == message
    assert fate.action_id == message["action_id"]
    assert rejected(b"[]").message is None
    assert rejected(body(fresh(CALL) | {"action_id": "nope"})).action_id is None


def test_integral_floats_are_sent_as_integers() -> None:
    fate = decide(body(fresh(CALL, params={**CALL["params"], "call_timeout": 30.0})), JSON)
    assert isinstance(fate, Accepted)
    assert fate.message["params"]["call_timeout"] == 30
    assert isinstance(fate.action.params["call_timeout"], int)
    assert isinstance(
        decide(body(fresh(CALL, params={**CALL["params"], "call_timeout": 30.5})), JSON), Rejected
    )


def test_reasons_are_bounded_and_sorted_by_precedence() -> None:
    message = {f"extra{i}": i for i in range(20)} | {"schema": "v0"}
    fate = rejected(body(message))
    assert fate.code is RejectCode.UNSUPPORTED_SCHEMA
    assert fate.reason.index("schema:") < fate.reason.index("unknown field(s)") < fate.reason.index("missing")
    assert len(fate.text) < 1000


def test_readable_scrubs_what_postgres_cannot_store() -> None:
    assert readable({"a\x00": ["\ud800", {"b": "c\x00"}]}) == {"a\ufffd": ["?", {"b": "c\ufffd"}]}
    assert readable(None) is None


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_messages())
def test_generated_valid_messages_are_accepted_and_round_trip(message: dict[str, Any]) -> None:
    fate = decide(body(message), JSON)
    assert isinstance(fate, Accepted), fate
    assert validator().is_valid(message)
    again = decide(body(fate.action.to_message()), JSON)
    assert isinstance(again, Accepted), again
    assert again.action == fate.action


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutated_messages_get_exactly_one_fate_and_agree_with_the_schema(message: dict[str, Any]) -> None:
    fate = decide(body(message), JSON)
    assert isinstance(fate, Accepted | Rejected)
    if isinstance(fate, Accepted):
        assert validator().is_valid(message)
    elif fate.code not in (RejectCode.INVALID_JSON, RejectCode.INVALID_FIELD):
        assert not validator().is_valid(message)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300),
    st.sampled_from([JSON, None, "text/plain"]),
    st.sampled_from([None, "utf-8", "gzip"]),
)
def test_arbitrary_bytes_never_raise(raw: bytes, content_type: str | None, encoding: str | None) -> None:
    fate = decide(raw, content_type, encoding)
    assert isinstance(fate, Rejected)  # random bytes are never a valid action
    assert readable(fate.message) == readable(fate.message)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_never_raises(document: Any) -> None:
    fate = decide(body(document), JSON)
    assert isinstance(fate, Rejected)


@pytest.mark.parametrize(
    ("number", "says"),
    [
        ("9" * 5000, "5000 digits"),
        ("-" + "1" * 21, "22 digits"),
        ("1e400", "out of range"),
        ("-1e400", "out of range"),
        ("1" * 70 + ".5", "72 characters"),
    ],
)
def test_numbers_no_field_can_hold_are_refused_on_the_spot_never_raised(number: str, says: str) -> None:
    """A 5,000-digit integer made decide() raise, and 1e400 parsed to inf, which PostgreSQL then
    refused in the rejected_input row: both were requeued ~20 times, delaying valid messages."""
    body = json.dumps(fresh(example("accept"))).replace('"accept"', '"accept", "x": ' + number, 1).encode()
    fate = decide(body, "application/json")
    assert isinstance(fate, Rejected)
    assert fate.code is RejectCode.OUT_OF_RANGE
    assert says in fate.reason


def test_a_bug_in_deciding_is_a_refusal_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(message: dict[str, Any]) -> Any:
        raise MemoryError("a bug of ours")

    monkeypatch.setattr(validation, "validate_message", broken)
    fate = decide(json.dumps(fresh(example("accept"))).encode(), "application/json")
    assert isinstance(fate, Rejected)
    assert "cannot be decided: MemoryError" in fate.reason
