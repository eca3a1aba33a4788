"""TaskRouter's events: what the emulator records for every reservation change, and their wire forms.

Twilio documents three ways to learn of an event, and the emulator speaks all three from one
record (:class:`Event`):

- the Workspace's **Event Callback**: a form-encoded POST to its ``EventCallbackUrl`` with
  ``EventType``, ``ResourceType``, ``ResourceSid``, ``Timestamp``, ``TimestampMs``, ``Sid``, the
  task's and the worker's fields, signed in ``X-Twilio-Signature`` with the account's auth token
  (:func:`callback_form`, :func:`sign_form`);
- an **Event Streams** webhook sink: a JSON array of CloudEvents (``type``
  ``com.twilio.taskrouter.reservation.accepted``, an ``id`` each), signed through the
  ``bodySHA256`` query parameter (:func:`cloud_event`, :func:`sign_json`);
- the **Events resource**, ``GET /v1/Workspaces/{ws}/Events`` (:func:`event_resource`).

Pure functions and a bounded, thread-safe log (:class:`EventLog`); no I/O.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

from workers.core.state_machine import Status
from workers.errors import InvalidParameter
from workers.testing.emulator.model import Reservation, Transition, Workspace, twilio_time

# The event each status is reached with (Twilio's reservation event types).
STATUS_EVENTS: Mapping[Status, str] = {
    Status.ACCEPTED: "reservation.accepted",
    Status.REJECTED: "reservation.rejected",
    Status.TIMEOUT: "reservation.timeout",
    Status.CANCELED: "reservation.canceled",
    Status.RESCINDED: "reservation.rescinded",
    Status.WRAPPING: "reservation.wrapup",
    Status.COMPLETED: "reservation.completed",
}
CREATED = "reservation.created"
FAILED = "reservation.failed"
RESERVATION_EVENT_TYPES = (CREATED, *STATUS_EVENTS.values(), FAILED)

# Twilio's descriptions of the reservation events (the TaskRouter Events reference).
DESCRIPTIONS: Mapping[str, str] = {
    CREATED: "Reservation {sid} created for Worker {worker}",
    "reservation.accepted": "Reservation {sid} accepted by Worker {worker}",
    "reservation.rejected": "Reservation {sid} rejected by Worker {worker}",
    "reservation.timeout": "Reservation {sid} timed out for Worker {worker}",
    "reservation.canceled": "Reservation {sid} canceled for Worker {worker}",
    "reservation.rescinded": "Reservation {sid} rescinded for Worker {worker}",
    "reservation.wrapup": "Reservation {sid} wrapping up for Worker {worker}",
    "reservation.completed": "Reservation {sid} completed by Worker {worker}",
    FAILED: "Reservation {sid} failed for Worker {worker}",
}

CLOUD_EVENT_TYPE_PREFIX = "com.twilio."
CLOUD_EVENT_SCHEMA = "https://events-schemas.twilio.com/TaskRouter.WDSEvent/4"
SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Who made a change, by the transition log's source: the reservation's worker (an API update or
# an agent acting "in the UI") or TaskRouter itself (timeouts, cancellations, injected races).
_ACTOR_BY_SOURCE = {"api": "worker", "admin": "worker", "timeout": "workspace", "fault": "workspace"}


_RESOURCES = {"reservation": "Reservation", "task": "Task", "worker": "Worker", "workspace": "Workspace"}


@dataclass(frozen=True, slots=True)
class Event:
    """One TaskRouter event about a reservation, as the emulator recorded it.

    ``sequence`` orders the log (commit order); ``sid`` is the event's own ``EV...`` SID, the same
    on every delivery of it (a duplicate or a retry), which is what a receiver deduplicates on.
    """

    sequence: int
    sid: str
    event_type: str
    account_sid: str
    workspace_sid: str
    workspace_name: str
    reservation_sid: str
    task_sid: str
    worker_sid: str
    worker_name: str
    worker_activity_sid: str | None
    status: str
    timestamp_ms: int
    actor_type: str
    source: str
    description: str
    task_age: int

    @property
    def group(self) -> str:
        """What the event is about, its type's prefix: ``reservation``, ``task``, ``worker``..."""
        return self.event_type.partition(".")[0]

    @property
    def resource_type(self) -> str:
        return _RESOURCES.get(self.group, "Reservation")

    @property
    def resource_sid(self) -> str:
        sids = {"task": self.task_sid, "worker": self.worker_sid, "workspace": self.workspace_sid}
        return sids.get(self.group, self.reservation_sid)

    @property
    def cloud_event_id(self) -> str:
        """The CloudEvent ``id`` (``NO`` and the event SID's digits: the same on every copy)."""
        return "NO" + self.sid[2:]


def new_event_sid() -> str:
    return "EV" + secrets.token_hex(16)


def _event(
    sequence: int,
    event_type: str,
    account_sid: str,
    workspace: Workspace | None,
    reservation: Reservation,
    source: str,
    at: float,
    task_created: float,
) -> Event:
    return Event(
        sequence=sequence,
        sid=new_event_sid(),
        event_type=event_type,
        account_sid=account_sid,
        workspace_sid=reservation.workspace_sid,
        workspace_name=workspace.friendly_name if workspace is not None else "",
        reservation_sid=reservation.sid,
        task_sid=reservation.task_sid,
        worker_sid=reservation.worker_sid,
        worker_name=reservation.worker_name,
        worker_activity_sid=reservation.worker_activity_sid,
        status=reservation.status.value,
        timestamp_ms=int(at * 1000),
        actor_type=_ACTOR_BY_SOURCE.get(source, "workspace"),
        source=source,
        description=DESCRIPTIONS.get(event_type, "{sid}").format(
            sid=reservation.sid, worker=reservation.worker_name
        ),
        task_age=max(0, int(at - task_created)),
    )


def event_type_of(transition: Transition) -> str | None:
    """The event a transition raises; None for a bare version bump (Twilio sends nothing then)."""
    if transition.from_status is transition.to_status:
        return None
    return STATUS_EVENTS.get(transition.to_status)


def callback_form(event: Event) -> dict[str, str]:
    """The Event Callback's form parameters (the TaskRouter Events reference: the common
    parameters, then the reservation events' Task, Worker and ReservationSid field data)."""
    form = {
        "AccountSid": event.account_sid,
        "EventDescription": event.description,
        "EventType": event.event_type,
        "ResourceSid": event.resource_sid,
        "ResourceType": event.resource_type,
        "Sid": event.sid,
        "Timestamp": str(event.timestamp_ms // 1000),
        "TimestampMs": str(event.timestamp_ms),
        "WorkspaceName": event.workspace_name,
        "WorkspaceSid": event.workspace_sid,
        "TaskSid": event.task_sid,
        "TaskAge": str(event.task_age),
        "TaskAttributes": "{}",
        "TaskPriority": "0",
        "TaskAssignmentStatus": _task_assignment_status(event.status),
        "WorkerSid": event.worker_sid,
        "WorkerName": event.worker_name,
        "WorkerAttributes": "{}",
    }
    if event.worker_activity_sid is not None:
        form["WorkerActivitySid"] = event.worker_activity_sid
    if event.group == "reservation":
        form["ReservationSid"] = event.reservation_sid
    return form


def _task_assignment_status(reservation_status: str) -> str:
    """The task's status as a reservation event reports it (the emulator models one task per
    reservation closely enough for that)."""
    return {
        "pending": "reserved",
        "accepted": "assigned",
        "wrapping": "wrapping",
        "completed": "completed",
        "canceled": "canceled",
    }.get(reservation_status, "pending")


def event_data(event: Event) -> dict[str, object]:
    """The event's data in snake case, as the Events resource's ``event_data`` and the Event
    Streams payload carry it."""
    data: dict[str, object] = {
        "reservation_sid": event.reservation_sid,
        "task_sid": event.task_sid,
        "task_age": event.task_age,
        "task_attributes": "{}",
        "task_priority": 0,
        "task_assignment_status": _task_assignment_status(event.status),
        "worker_sid": event.worker_sid,
        "worker_name": event.worker_name,
        "worker_attributes": "{}",
        "workspace_sid": event.workspace_sid,
        "workspace_name": event.workspace_name,
    }
    if event.worker_activity_sid is not None:
        data["worker_activity_sid"] = event.worker_activity_sid
    return data


def event_resource(event: Event, base: str) -> dict[str, object]:
    """The Events resource's JSON for one event (twilio-python's ``EventInstance`` fields)."""
    workspace = f"{base}/v1/Workspaces/{event.workspace_sid}"
    actor_sid = event.worker_sid if event.actor_type == "worker" else event.workspace_sid
    actor_url = f"{workspace}/Workers/{event.worker_sid}" if event.actor_type == "worker" else workspace
    return {
        "account_sid": event.account_sid,
        "actor_sid": actor_sid,
        "actor_type": event.actor_type,
        "actor_url": actor_url,
        "description": event.description,
        "event_data": event_data(event),
        "event_date": twilio_time(event.timestamp_ms / 1000),
        "event_date_ms": event.timestamp_ms,
        "event_type": event.event_type,
        "resource_sid": event.resource_sid,
        "resource_type": event.resource_type,
        "resource_url": f"{workspace}/Tasks/{event.task_sid}/Reservations/{event.reservation_sid}",
        "sid": event.sid,
        "source": "Twilio" if event.actor_type == "workspace" else "API",
        "source_ip_address": "127.0.0.1",
        "url": f"{workspace}/Events/{event.sid}",
        "workspace_sid": event.workspace_sid,
    }


def cloud_event(event: Event) -> dict[str, object]:
    """One Event Streams CloudEvent (schema ``TaskRouter.WDSEvent``): ``type``
    ``com.twilio.taskrouter.reservation.accepted`` etc., and the event under ``data.payload``."""
    stamp = _iso_ms(event.timestamp_ms)
    payload: dict[str, object] = {
        "sid": event.sid,
        "eventtype": event.event_type,
        "account_sid": event.account_sid,
        "timestamp": stamp,
        "resource_type": event.resource_type,
        "resource_sid": event.resource_sid,
        "description": event.description,
        **event_data(event),
    }
    return {
        "specversion": "1.0",
        "type": f"{CLOUD_EVENT_TYPE_PREFIX}taskrouter.{event.event_type}",
        "source": f"/v1/Workspaces/{event.workspace_sid}/Events",
        "id": event.cloud_event_id,
        "dataschema": CLOUD_EVENT_SCHEMA,
        "datacontenttype": "application/json",
        "time": stamp,
        "data": {
            "sid": event.sid,
            "account_sid": event.account_sid,
            "timestamp": stamp,
            "level": "INFO",
            "group": event.group,
            "product_name": "TaskRouter",
            "payload_type": "application/json",
            "payload": payload,
        },
    }


def _iso_ms(timestamp_ms: int) -> str:
    seconds, millis = divmod(timestamp_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


# -- delivery ---------------------------------------------------------------------------------------

RETRY_POLICIES = frozenset({"ct", "rt", "4xx", "5xx", "all"})


@dataclass(frozen=True, slots=True)
class ConnectionOverrides:
    """Twilio's webhook connection overrides (``#ct=...&rt=...&tt=...&rc=...&rp=...``)."""

    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 15.0
    retries: int = 1
    retry_on: frozenset[str] = frozenset({"ct"})

    @classmethod
    def of(cls, url: str) -> ConnectionOverrides:
        """The overrides in ``url``'s fragment; raises :class:`InvalidParameter` when one is wrong."""
        fragment = urlsplit(url).fragment
        if not fragment:
            return cls()
        pairs = {key: values[-1] for key, values in parse_qs(fragment).items()}
        try:
            connect = int(pairs.get("ct", 5000)) / 1000
            read = int(pairs.get("rt", 15000)) / 1000
            total = int(pairs.get("tt", 15000)) / 1000
            retries = int(pairs.get("rc", 1))
        except ValueError:
            raise InvalidParameter("url", f"Invalid connection overrides in {url!r}") from None
        policies = frozenset(part for part in pairs.get("rp", "ct").split(",") if part)
        # Twilio's ranges: ct 100 to 10,000 ms, rt and tt 100 to 15,000 ms, rc 0 to 5.
        in_range = 0.1 <= connect <= 10 and 0.1 <= read <= 15 and 0.1 <= total <= 15 and 0 <= retries <= 5
        if not policies <= RETRY_POLICIES or not in_range:
            raise InvalidParameter("url", f"Invalid connection overrides in {url!r}")
        return cls(connect, read, total, retries, policies)

    def retries_after(self, failure: str) -> bool:
        return "all" in self.retry_on or failure in self.retry_on


# -- signatures ------------------------------------------------------------------------------------


def strip_fragment(url: str) -> str:
    """The URL as it is requested and signed: a fragment (Twilio's connection overrides) never
    leaves the sender."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(fragment=""))


def sign_form(url: str, form: Mapping[str, str], auth_token: str) -> str:
    """``X-Twilio-Signature`` of a form POST: twilio's ``RequestValidator`` algorithm (HMAC-SHA1
    with the auth token over the URL and the sorted parameters)."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(form)))


def json_body(events: Iterable[Event]) -> bytes:
    return json.dumps([cloud_event(event) for event in events], separators=(",", ":")).encode()


def sign_json(url: str, body: bytes, auth_token: str) -> tuple[str, str]:
    """The URL a JSON body is posted to (with ``bodySHA256``, the body's SHA-256 in hex) and its
    ``X-Twilio-Signature`` over that URL alone: twilio's ``RequestValidator`` JSON variant."""
    digest = hashlib.sha256(body).hexdigest()
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    signed = urlunsplit(parts._replace(query=query + urlencode({"bodySHA256": digest})))
    return signed, str(RequestValidator(auth_token).compute_signature(signed, {}))


# -- the log -------------------------------------------------------------------------------------------


class EventLog:
    """Every event, oldest first, bounded like the transition log; thread-safe."""

    def __init__(self, size: int, account_sid: str) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._account_sid = account_sid
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._entries: deque[Event] = deque(maxlen=self._size)
            self._by_sid: dict[str, Event] = {}
            self._sequence = itertools.count(1)
            self._task_created: dict[str, float] = {}

    def record(
        self,
        event_type: str,
        workspace: Workspace | None,
        reservation: Reservation,
        source: str,
        at: float | None = None,
    ) -> Event:
        """Record one event of ``reservation`` (as it is after the change) and return it."""
        at = time.time() if at is None else at
        with self._lock:
            created = self._task_created.setdefault(reservation.task_sid, at)
            event = _event(
                next(self._sequence),
                event_type,
                self._account_sid,
                workspace,
                reservation,
                source,
                at,
                created,
            )
            if len(self._entries) == self._entries.maxlen:
                self._by_sid.pop(self._entries[0].sid, None)
            self._entries.append(event)
            self._by_sid[event.sid] = event
        return event

    def get(self, sid: str) -> Event | None:
        return self._by_sid.get(sid)

    def entries(self) -> list[Event]:
        with self._lock:
            return list(self._entries)
