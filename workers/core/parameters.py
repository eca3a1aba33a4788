"""The catalogue of reservation update parameters, taken from the seeds.

One entry per body parameter of ``POST .../Reservations/{Sid}`` (seeds 000, 001, 003, 004):
its wire name, its twilio-python keyword, its type, and the enums, SID patterns, ranges and
PII marks the seeds give. The emulator validates form bodies with it, the ledger redacts with
it, and the intake schema is checked against it, so there is one place to change when Twilio
changes.

Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from workers.errors import InvalidParameter


class Kind(enum.Enum):
    STRING = "string"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    URI = "uri"
    SID = "sid"
    ENUM = "enum"
    ENUM_LIST = "enum-list"


class Scope(enum.Enum):
    """Which update endpoint accepts a parameter."""

    TASK = "task"
    WORKER = "worker"


BOTH_SCOPES = frozenset({Scope.TASK, Scope.WORKER})
TASK_ONLY = frozenset({Scope.TASK})

HTTP_METHODS = ("HEAD", "GET", "POST", "PATCH", "PUT", "DELETE")
CALL_PROGRESS_EVENTS = ("initiated", "ringing", "answered", "completed")
RESERVATION_STATUSES = (
    "pending",
    "accepted",
    "rejected",
    "timeout",
    "canceled",
    "rescinded",
    "wrapping",
    "completed",
)
INSTRUCTIONS = ("conference", "dequeue", "call", "redirect", "supervise")


@dataclass(frozen=True, slots=True)
class Parameter:
    """One update body parameter as the seeds describe it."""

    wire: str
    keyword: str
    kind: Kind
    values: tuple[str, ...] = ()
    pattern: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    pii: bool = False
    secret: bool = False
    scopes: frozenset[Scope] = BOTH_SCOPES
    case_insensitive: bool = False
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    def parse(self, raw: str | Sequence[str]) -> object:
        """Turn a wire value (a form field, or its repeated values) into a typed value.

        Raises :class:`InvalidParameter` with a message that names the parameter.
        """
        if self.kind is Kind.ENUM_LIST:
            items = [raw] if isinstance(raw, str) else list(raw)
            for item in items:
                self._check_enum(item)
            return items
        if not isinstance(raw, str):
            if len(raw) != 1:
                raise InvalidParameter(self.wire, f"Parameter '{self.wire}' may be given only once")
            raw = raw[0]
        return self._parse_scalar(raw)

    def _parse_scalar(self, raw: str) -> object:
        if self.kind is Kind.BOOLEAN:
            lowered = raw.lower()
            if lowered not in ("true", "false"):
                raise InvalidParameter(
                    self.wire, f"Invalid value '{raw}' for parameter '{self.wire}': expected true or false"
                )
            return lowered == "true"
        if self.kind is Kind.INTEGER:
            try:
                number = int(raw)
            except ValueError:
                raise InvalidParameter(
                    self.wire, f"Invalid value '{raw}' for parameter '{self.wire}': expected an integer"
                ) from None
            self._check_range(number)
            return number
        if self.kind is Kind.ENUM:
            return self._check_enum(raw)
        if self.kind is Kind.SID:
            assert self._regex is not None
            if not self._regex.fullmatch(raw):
                raise InvalidParameter(
                    self.wire,
                    f"Invalid value '{raw}' for parameter '{self.wire}': must match {self.pattern}",
                )
            return raw
        if self.kind is Kind.URI:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise InvalidParameter(
                    self.wire, f"Invalid value '{raw}' for parameter '{self.wire}': expected an absolute URL"
                )
            return raw
        if not raw:
            raise InvalidParameter(self.wire, f"Parameter '{self.wire}' must not be empty")
        return raw

    def _check_enum(self, raw: str) -> str:
        if self.case_insensitive:
            lowered = raw.lower()
            if lowered in self.values:
                return lowered
        elif raw in self.values:
            return raw
        allowed = ", ".join(self.values)
        raise InvalidParameter(
            self.wire, f"Invalid value '{raw}' for parameter '{self.wire}': must be one of {allowed}"
        )

    def _check_range(self, number: int) -> None:
        low, high = self.minimum, self.maximum
        if (low is not None and number < low) or (high is not None and number > high):
            raise InvalidParameter(
                self.wire,
                f"Invalid value '{number}' for parameter '{self.wire}': must be between {low} and {high}",
            )


def _sid(wire: str, keyword: str, prefix: str, **extra: object) -> Parameter:
    return Parameter(wire, keyword, Kind.SID, pattern=f"^{prefix}[0-9a-fA-F]{{32}}$", **extra)  # type: ignore[arg-type]


def _enum(wire: str, keyword: str, values: Iterable[str], **extra: object) -> Parameter:
    return Parameter(wire, keyword, Kind.ENUM, values=tuple(values), **extra)  # type: ignore[arg-type]


def _events(wire: str, keyword: str, values: Iterable[str]) -> Parameter:
    return Parameter(wire, keyword, Kind.ENUM_LIST, values=tuple(values))


# Call-ring timeouts: "Default is 60 seconds, the maximum is 999 seconds" (seed 003).
_RING_TIMEOUT = {"minimum": 1, "maximum": 999}

PARAMETERS: tuple[Parameter, ...] = (
    _enum("ReservationStatus", "reservation_status", RESERVATION_STATUSES),
    _sid("WorkerActivitySid", "worker_activity_sid", "WA"),
    _enum("Instruction", "instruction", INSTRUCTIONS, case_insensitive=True),
    # Dequeue instruction
    _sid("DequeuePostWorkActivitySid", "dequeue_post_work_activity_sid", "WA"),
    Parameter("DequeueFrom", "dequeue_from", Kind.STRING, pii=True),
    _enum("DequeueRecord", "dequeue_record", ("record-from-answer", "do-not-record")),
    Parameter("DequeueTimeout", "dequeue_timeout", Kind.INTEGER, **_RING_TIMEOUT),  # type: ignore[arg-type]
    Parameter("DequeueTo", "dequeue_to", Kind.STRING, pii=True),
    Parameter("DequeueStatusCallbackUrl", "dequeue_status_callback_url", Kind.URI),
    _events("DequeueStatusCallbackEvent", "dequeue_status_callback_event", CALL_PROGRESS_EVENTS),
    # Call instruction
    Parameter("CallFrom", "call_from", Kind.STRING, pii=True),
    _enum("CallRecord", "call_record", ("record-from-answer", "do-not-record")),
    Parameter("CallTimeout", "call_timeout", Kind.INTEGER, **_RING_TIMEOUT),  # type: ignore[arg-type]
    Parameter("CallTo", "call_to", Kind.STRING, pii=True),
    Parameter("CallUrl", "call_url", Kind.URI),
    Parameter("CallStatusCallbackUrl", "call_status_callback_url", Kind.URI),
    Parameter("CallAccept", "call_accept", Kind.BOOLEAN),
    # Redirect instruction
    _sid("RedirectCallSid", "redirect_call_sid", "CA"),
    Parameter("RedirectAccept", "redirect_accept", Kind.BOOLEAN),
    Parameter("RedirectUrl", "redirect_url", Kind.URI),
    # Conference instruction (the Participants API parameters it accepts)
    Parameter("To", "to", Kind.STRING, pii=True),
    Parameter("From", "from_", Kind.STRING, pii=True),
    Parameter("StatusCallback", "status_callback", Kind.URI),
    _enum("StatusCallbackMethod", "status_callback_method", HTTP_METHODS),
    _events("StatusCallbackEvent", "status_callback_event", CALL_PROGRESS_EVENTS),
    Parameter("Timeout", "timeout", Kind.INTEGER, **_RING_TIMEOUT),  # type: ignore[arg-type]
    Parameter("Record", "record", Kind.BOOLEAN),
    Parameter("Muted", "muted", Kind.BOOLEAN),
    _enum("Beep", "beep", ("true", "false", "onEnter", "onExit")),
    Parameter("StartConferenceOnEnter", "start_conference_on_enter", Kind.BOOLEAN),
    Parameter("EndConferenceOnExit", "end_conference_on_exit", Kind.BOOLEAN),
    Parameter("WaitUrl", "wait_url", Kind.URI),
    _enum("WaitMethod", "wait_method", HTTP_METHODS),
    Parameter("EarlyMedia", "early_media", Kind.BOOLEAN),
    Parameter("MaxParticipants", "max_participants", Kind.INTEGER, minimum=2, maximum=250),
    Parameter("ConferenceStatusCallback", "conference_status_callback", Kind.URI),
    _enum("ConferenceStatusCallbackMethod", "conference_status_callback_method", HTTP_METHODS),
    _events(
        "ConferenceStatusCallbackEvent",
        "conference_status_callback_event",
        ("start", "end", "join", "leave", "mute", "hold", "speaker"),
    ),
    _enum("ConferenceRecord", "conference_record", ("true", "false", "record-from-start", "do-not-record")),
    _enum("ConferenceTrim", "conference_trim", ("trim-silence", "do-not-trim")),
    _enum("RecordingChannels", "recording_channels", ("mono", "dual")),
    Parameter("RecordingStatusCallback", "recording_status_callback", Kind.URI),
    _enum("RecordingStatusCallbackMethod", "recording_status_callback_method", HTTP_METHODS),
    Parameter("ConferenceRecordingStatusCallback", "conference_recording_status_callback", Kind.URI),
    _enum(
        "ConferenceRecordingStatusCallbackMethod",
        "conference_recording_status_callback_method",
        HTTP_METHODS,
    ),
    # Seed 000 lists seven regions; seed 001 adds us2. Both endpoints accept all eight here.
    _enum("Region", "region", ("us1", "us2", "ie1", "de1", "sg1", "br1", "au1", "jp1")),
    Parameter("SipAuthUsername", "sip_auth_username", Kind.STRING, pii=True),
    Parameter("SipAuthPassword", "sip_auth_password", Kind.STRING, secret=True),
    _sid("PostWorkActivitySid", "post_work_activity_sid", "WA"),
    # Supervise instruction: the task-scoped endpoint only (seed 000; twilio-python agrees).
    _enum("SupervisorMode", "supervisor_mode", ("monitor", "whisper", "barge"), scopes=TASK_ONLY),
    Parameter("Supervisor", "supervisor", Kind.STRING, scopes=TASK_ONLY),
    Parameter("EndConferenceOnCustomerExit", "end_conference_on_customer_exit", Kind.BOOLEAN),
    Parameter("BeepOnCustomerEntrance", "beep_on_customer_entrance", Kind.BOOLEAN),
    _enum("JitterBufferSize", "jitter_buffer_size", ("small", "medium", "large", "off")),
)

BY_WIRE: Mapping[str, Parameter] = {p.wire: p for p in PARAMETERS}
BY_KEYWORD: Mapping[str, Parameter] = {p.keyword: p for p in PARAMETERS}

PII_WIRE_NAMES = frozenset(p.wire for p in PARAMETERS if p.pii)
SECRET_WIRE_NAMES = frozenset(p.wire for p in PARAMETERS if p.secret)

# What each instruction cannot do without (seed 003, "Required?" column).
REQUIRED_BY_INSTRUCTION: Mapping[str, tuple[str, ...]] = {
    "conference": (),
    "dequeue": ("DequeueFrom",),
    "call": ("CallFrom", "CallUrl"),
    "redirect": ("RedirectCallSid", "RedirectUrl"),
    "supervise": ("Supervisor",),
}


def parse_update_form(form: Mapping[str, Sequence[str]], scope: Scope) -> dict[str, object]:
    """Validate a form-encoded update body and return it typed, keyed by wire name.

    ``form`` maps each field name to all of its values (repeated fields carry lists).
    Unknown fields are refused rather than ignored: a misspelt parameter silently dropped
    would hide a bug in the caller.
    """
    parsed: dict[str, object] = {}
    for name, raw in form.items():
        parameter = BY_WIRE.get(name)
        if parameter is None or scope not in parameter.scopes:
            raise InvalidParameter(name, f"Unknown parameter '{name}'")
        parsed[name] = parameter.parse(raw)
    instruction = parsed.get("Instruction")
    status = parsed.get("ReservationStatus")
    if instruction is not None and status is not None:
        raise InvalidParameter(
            "Instruction", "Parameters 'Instruction' and 'ReservationStatus' cannot be used together"
        )
    if instruction is None and status is None:
        raise InvalidParameter("ReservationStatus", "Either 'ReservationStatus' or 'Instruction' is required")
    if isinstance(instruction, str):
        for required in REQUIRED_BY_INSTRUCTION[instruction]:
            if required not in parsed:
                raise InvalidParameter(
                    required,
                    f"Missing required parameter '{required}' for the {instruction} instruction",
                )
    return parsed


# Which parameters each instruction takes (wire names): the grouping the intake schema allows per
# action. The conference instruction takes the Participants API parameters (seeds 000, 003).
CONFERENCE_PARAMETERS: tuple[str, ...] = (
    "To",
    "From",
    "PostWorkActivitySid",
    "Timeout",
    "StatusCallback",
    "StatusCallbackMethod",
    "StatusCallbackEvent",
    "Record",
    "Muted",
    "Beep",
    "StartConferenceOnEnter",
    "EndConferenceOnExit",
    "WaitUrl",
    "WaitMethod",
    "EarlyMedia",
    "MaxParticipants",
    "ConferenceStatusCallback",
    "ConferenceStatusCallbackMethod",
    "ConferenceStatusCallbackEvent",
    "ConferenceRecord",
    "ConferenceTrim",
    "RecordingChannels",
    "RecordingStatusCallback",
    "RecordingStatusCallbackMethod",
    "ConferenceRecordingStatusCallback",
    "ConferenceRecordingStatusCallbackMethod",
    "Region",
    "SipAuthUsername",
    "SipAuthPassword",
    "EndConferenceOnCustomerExit",
    "BeepOnCustomerEntrance",
    "JitterBufferSize",
)

PARAMETERS_BY_INSTRUCTION: Mapping[str, tuple[str, ...]] = {
    "conference": CONFERENCE_PARAMETERS,
    "dequeue": tuple(p.wire for p in PARAMETERS if p.wire.startswith("Dequeue")),
    "call": tuple(p.wire for p in PARAMETERS if p.wire.startswith("Call")),
    "redirect": tuple(p.wire for p in PARAMETERS if p.wire.startswith("Redirect")),
    "supervise": ("Supervisor", "SupervisorMode"),
}

# The parameters a status update may carry besides ReservationStatus (seed 003: rejecting may
# move the worker to another activity).
PARAMETERS_BY_STATUS: Mapping[str, tuple[str, ...]] = {"rejected": ("WorkerActivitySid",)}
