"""Decide the fate of one raw message from ``reservations.actions``: accepted or rejected, and why.

Pure: bytes and message properties in, an :class:`Accepted` action or a :class:`Rejected` reason
out, never an exception. The schema is the committed ``schemas/reservation-action.v1.schema.json``
(loaded once), or the same schema generated from the catalogue when the file is not on disk
(an installed wheel); a test keeps the two equal.

Rejection reasons never quote a value of the message (values may be PII): they name the field and
the rule it broke. Each rejection has a stable ``code`` for dashboards and a readable ``reason``.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError  # type: ignore[import-untyped]

from workers.core.action import Action
from workers.core.parameters import BY_KEYWORD, Kind
from workers.core.schema import MAX_BODY_BYTES, SCHEMA_FILE_NAME, SCHEMAS_DIR, build_schema

JSON_CONTENT_TYPE = "application/json"
# The labels a UTF-8 JSON body may carry: none, utf-8, or kombu's "binary" (what kombu sets when it
# is handed bytes with a content type). The label is only a label: the bytes must be UTF-8 anyway.
ACCEPTED_ENCODINGS = frozenset({"", "utf-8", "utf8", "binary"})
MAX_REASONS = 5


class RejectCode(enum.StrEnum):
    """Why a message was refused, in decreasing order of precedence."""

    TOO_LARGE = "too_large"
    CONTENT_TYPE = "content_type"
    CONTENT_ENCODING = "content_encoding"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    UNKNOWN_ACTION = "unknown_action"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    BAD_SID = "bad_sid"
    OUT_OF_RANGE = "out_of_range"
    INVALID_FIELD = "invalid_field"


_PRECEDENCE = {code: index for index, code in enumerate(RejectCode)}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A valid message: the action, and its wire form (normalised) to hand to the apply task."""

    action: Action
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused message: why, and what could be read of it (a JSON object, else None)."""

    code: RejectCode
    reason: str
    message: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The reason as the dead-letter header and the ledger show it: ``code: reason``."""
        return f"{self.code.value}: {self.reason}"

    @property
    def action_id(self) -> str | None:
        """The message's action_id, when it has a well-formed one."""
        value = (self.message or {}).get("action_id")
        if not isinstance(value, str):
            return None
        try:
            return str(uuid.UUID(value))
        except ValueError:
            return None


Fate = Accepted | Rejected


# -- the schema -----------------------------------------------------------------------------------

FORMATS = FormatChecker()


def _is_date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    parsed = datetime.fromisoformat(instance.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return False
    parsed.astimezone(UTC)  # OverflowError outside years 1-9999 in UTC: PostgreSQL cannot load it back
    return True


def _is_url(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    parts = urlsplit(instance)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0


FORMATS.checks("date-time", raises=(ValueError, OverflowError))(_is_date_time)
FORMATS.checks("uri", raises=ValueError)(_is_url)


def load_schema() -> dict[str, Any]:
    """The committed schema file when present, else the same schema built from the catalogue."""
    path = SCHEMAS_DIR / SCHEMA_FILE_NAME
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return loaded
    return build_schema()


@functools.cache
def validator() -> Draft202012Validator:
    """The schema's validator, with format checking (uuid, date-time, uri); built once."""
    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FORMATS)


# -- decoding -------------------------------------------------------------------------------------


class _Undecodable(Exception):
    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Undecodable(RejectCode.INVALID_JSON, f"duplicate key {_name(key)}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise _Undecodable(RejectCode.INVALID_JSON, f"{name} is not JSON")


# No field of the contract needs more digits than this (TaskRouter's integers are 32-bit); longer
# integers would cost quadratic time to convert and, past 4,300 digits, make Python refuse them.
MAX_INTEGER_DIGITS = 20
MAX_NUMBER_CHARACTERS = 64


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Undecodable(RejectCode.OUT_OF_RANGE, f"an integer of {len(text)} digits: the limit is 20")
    return int(text)


def _finite_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARACTERS:
        raise _Undecodable(RejectCode.OUT_OF_RANGE, f"a number of {len(text)} characters: the limit is 64")
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as infinity: no field, nor PostgreSQL, takes it
        raise _Undecodable(RejectCode.OUT_OF_RANGE, f"the number {_shorten(text, 40)} is out of range")
    return value


def _bad_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _leaves(document: object, *, keys: bool = False) -> Iterable[object]:
    """Every value of a parsed document that is not an object or an array, and the objects' keys
    too if asked (iteratively: documents may be deep)."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if keys:
                stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _strings(document: object) -> Iterable[str]:
    """Every string of a parsed document, keys included."""
    return (item for item in _leaves(document, keys=True) if isinstance(item, str))


def _content_problem(content_type: str | None, content_encoding: str | None) -> Rejected | None:
    if not content_type:
        return Rejected(RejectCode.CONTENT_TYPE, f"no content type: expected {JSON_CONTENT_TYPE}")
    media, *parameters = (part.strip().lower() for part in content_type.split(";"))
    if media != JSON_CONTENT_TYPE:
        return Rejected(RejectCode.CONTENT_TYPE, f"content type {_name(media)}: expected {JSON_CONTENT_TYPE}")
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            return Rejected(RejectCode.CONTENT_TYPE, "charset must be utf-8")
    if (content_encoding or "").strip().lower() not in ACCEPTED_ENCODINGS:
        return Rejected(
            RejectCode.CONTENT_ENCODING,
            f"content encoding {_name(content_encoding or '')}: expected none, utf-8 or binary",
        )
    return None


def decode(body: bytes) -> object:
    """Parse a body as strict UTF-8 JSON; raise :class:`_Undecodable` with the reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"the body is not UTF-8 ({exc.reason} at byte {exc.start})"
        raise _Undecodable(RejectCode.NOT_UTF8, reason) from None
    try:
        document = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise _Undecodable(
            RejectCode.INVALID_JSON, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise _Undecodable(RejectCode.INVALID_JSON, "nested too deeply") from None
    if any(_bad_text(s) for s in _strings(document)):
        raise _Undecodable(RejectCode.INVALID_JSON, "strings must not hold U+0000 or unpaired surrogates")
    return document


# -- the decision ---------------------------------------------------------------------------------


def decide(body: bytes, content_type: str | None, content_encoding: str | None = None) -> Fate:
    """The fate of one raw message. Never raises: whatever a message holds, it is accepted or
    refused on its first delivery, so no poison message is requeued or delays the ones behind it."""
    try:
        return _decide(body, content_type, content_encoding)
    except Exception as exc:  # a bug of ours must not turn a message into poison
        return Rejected(RejectCode.INVALID_FIELD, f"the message cannot be decided: {type(exc).__name__}")


def _decide(body: bytes, content_type: str | None, content_encoding: str | None) -> Fate:
    if len(body) > MAX_BODY_BYTES:
        return Rejected(RejectCode.TOO_LARGE, f"{len(body)} bytes: the limit is {MAX_BODY_BYTES}")
    problem = _content_problem(content_type, content_encoding)
    if problem is not None:
        return problem
    try:
        document = decode(body)
    except _Undecodable as exc:
        return Rejected(exc.code, exc.reason)
    if not isinstance(document, dict):
        return Rejected(RejectCode.NOT_AN_OBJECT, f"the body is a JSON {_json_type(document)}, not an object")
    return validate_message(document)


def validate_message(message: dict[str, Any]) -> Fate:
    """Check a parsed message against the schema and build its action. Never raises."""
    try:
        errors = list(validator().iter_errors(message))
    except RecursionError:  # pragma: no cover - decode() bounds the depth first
        return Rejected(RejectCode.INVALID_JSON, "nested too deeply", None)
    if errors:
        return _rejection(errors, message)
    if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(message)):
        # Only a decoder other than ours (Celery's, on the apply queue) produces these.
        return Rejected(RejectCode.OUT_OF_RANGE, "a number is not finite", message)
    normalised = _normalise(message)
    try:
        action = Action.from_message(normalised)
    except (ValueError, KeyError, TypeError) as exc:  # the schema should have caught it
        return Rejected(RejectCode.INVALID_FIELD, f"not a valid action: {type(exc).__name__}", message)
    return Accepted(action, normalised)


def _normalise(message: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema's integers include 5.0; TaskRouter's do not. Send them as 5."""
    params = message.get("params")
    if not isinstance(params, dict):
        return message
    fixed = {
        key: int(value) if isinstance(value, float) and BY_KEYWORD[key].kind is Kind.INTEGER else value
        for key, value in params.items()
    }
    return {**message, "params": fixed}


def _rejection(errors: list[ValidationError], message: dict[str, Any]) -> Rejected:
    explained = sorted(
        {(_code(error), _describe(error)) for error in errors},
        key=lambda pair: (_PRECEDENCE[pair[0]], pair[1]),
    )
    reasons = [text for _, text in explained[:MAX_REASONS]]
    if len(explained) > MAX_REASONS:
        reasons.append(f"and {len(explained) - MAX_REASONS} more")
    return Rejected(explained[0][0], "; ".join(reasons), message)


def _code(error: ValidationError) -> RejectCode:
    path = list(error.absolute_path)
    if path == ["schema"]:
        return RejectCode.UNSUPPORTED_SCHEMA
    if path == ["action"]:
        return RejectCode.UNKNOWN_ACTION
    if error.validator == "additionalProperties":
        return RejectCode.UNKNOWN_FIELD
    addressing = error.validator == "anyOf" and "task_sid" in str(error.validator_value)
    if error.validator == "required" or addressing:
        return RejectCode.MISSING_FIELD
    if error.validator == "pattern" and str(error.validator_value).endswith("[0-9a-fA-F]{32}$"):
        return RejectCode.BAD_SID
    if error.validator in ("minimum", "maximum"):
        return RejectCode.OUT_OF_RANGE
    return RejectCode.INVALID_FIELD


def _describe(error: ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "message"
    keyword, rule, instance = error.validator, error.validator_value, error.instance
    text: str
    if keyword == "required":
        present = instance if isinstance(instance, dict) else {}
        missing = [name for name in rule if name not in present]
        text = "missing " + ", ".join(_name(name) for name in missing)
    elif keyword == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(set(instance) - allowed) if isinstance(instance, dict) else []
        text = "unknown field(s) " + ", ".join(_name(name) for name in extra[:MAX_REASONS])
    elif keyword == "const":
        text = f"must be {json.dumps(rule)}"
    elif keyword == "enum":
        text = "must be one of " + _shorten(", ".join(str(value) for value in rule))
    elif keyword == "type":
        text = f"must be of type {rule}, not {_json_type(instance)}"
    elif keyword == "pattern":
        text = f"must match {rule}"
    elif keyword == "format":
        text = f"is not a valid {rule}"
    elif keyword in ("minimum", "maximum"):
        text = f"must be {'at least' if keyword == 'minimum' else 'at most'} {rule}"
    elif keyword in ("minLength", "maxLength", "minItems", "maxItems"):
        bound = "at least" if keyword.startswith("min") else "at most"
        unit = "characters" if keyword.endswith("Length") else "items"
        text = f"must have {bound} {rule} {unit}"
    elif keyword == "uniqueItems":
        text = "must not repeat an item"
    elif keyword in ("anyOf", "oneOf"):
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        text = str(description or f"does not match {keyword} of its allowed forms")
    else:
        text = f"breaks the schema's {keyword!r} rule"
    return f"{where}: {text}"


def _name(name: str, limit: int = 40) -> str:
    """A field name as it appears in a reason: quoted, and cut short."""
    cut = name if len(name) <= limit else name[:limit] + "..."
    return json.dumps(cut)


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number"


def readable(message: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What of a rejected message the ledger can store: text without U+0000 or lone surrogates."""
    if message is None:
        return None
    scrubbed = _scrub(dict(message))
    return scrubbed if isinstance(scrubbed, dict) else None


def _scrub(value: Any, depth: int = 0) -> Any:
    """JSON that PostgreSQL takes, whatever a decoder made of the message (Celery's turns 1e400
    into inf and ``{"__type__": "bytes"}`` into bytes): no U+0000, no lone surrogates, no
    non-finite numbers, nothing but JSON's own types."""
    if depth > 50:
        return "[nested too deeply]"
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_scrub(str(k), depth + 1): _scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, depth + 1) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return f"[{type(value).__name__}]"
