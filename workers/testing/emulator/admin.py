"""A typed client of the emulator's admin API, for tests, the demo and the benchmarks.

Admin errors come back as the project's own exceptions (``UnknownResource``,
``ResourceConflict``, ``InvalidParameter``, ``TransitionRefused``), rebuilt from the class name
the admin API puts in its error bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import requests

from workers.core.closing import Closing
from workers.errors import (
    InvalidParameter,
    ReservationsError,
    ResourceConflict,
    TransitionRefused,
    UnknownResource,
)

DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """A reservation as the admin API shows it: with its ``version`` (the ETag) and both paths."""

    sid: str
    workspace_sid: str
    task_sid: str
    worker_sid: str
    worker_name: str
    status: str
    version: int
    etag: str
    date_created: str
    date_updated: str
    worker_activity_sid: str | None
    task_path: str
    worker_path: str


@dataclass(frozen=True, slots=True)
class TransitionInfo:
    """One transition log entry (see ``workers.testing.emulator.model.Transition``)."""

    sequence: int
    reservation_sid: str
    task_sid: str
    worker_sid: str
    workspace_sid: str
    from_status: str
    to_status: str
    version_before: int
    version_after: int
    source: str
    request_id: str | None
    requested: str
    at: float
    note: str | None


@dataclass(frozen=True, slots=True)
class UpdateInfo:
    """One update log entry (see ``workers.testing.emulator.updates.UpdateEntry``)."""

    sequence: int
    at: float
    reservation_sid: str
    request_id: str
    scope: str
    params: Mapping[str, Any] | None
    if_match: str | None
    faults: list[str]
    answer: int | str
    landed: bool
    landed_version: int | None
    from_status: str | None
    to_status: str | None
    traceparent: str | None = None

    @property
    def answer_lost(self) -> bool:
        """It landed and its answer never left the emulator (a drop after apply)."""
        return self.landed and self.answer == "dropped"


@dataclass(frozen=True, slots=True)
class EventInfo:
    """One event the emulator recorded (see ``workers.testing.emulator.events.Event``)."""

    sequence: int
    sid: str
    event_type: str
    account_sid: str
    workspace_sid: str
    reservation_sid: str
    task_sid: str
    worker_sid: str
    worker_name: str
    status: str
    timestamp_ms: int
    actor_type: str
    source: str
    description: str


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """One delivery attempt of an event (see ``workers.testing.emulator.sender.Delivery``):
    ``outcome`` is the receiver's HTTP status, ``connect_error``, ``timeout``, ``dropped`` (a
    fault) or ``overflow`` (the sender's queue was full)."""

    sequence: int
    at: float
    event_sid: str
    event_type: str
    reservation_sid: str
    channel: str
    url: str
    attempt: int
    copy: int
    outcome: str
    faults: list[str]


@dataclass(frozen=True, slots=True)
class OperationCounts:
    """Requests of one operation: the total, and by HTTP status (``"dropped"`` for drops)."""

    total: int
    by_status: Mapping[str, int]

    def status(self, status: int | str) -> int:
        return self.by_status.get(str(status), 0)


@dataclass(frozen=True, slots=True)
class ReservationCounts:
    """The Twilio API requests whose path named one reservation."""

    fetch: OperationCounts
    update: OperationCounts

    @property
    def calls(self) -> int:
        return self.fetch.total + self.update.total


T = TypeVar("T")


def _record(cls: type[T], payload: Mapping[str, Any]) -> T:
    return cls(**{field.name: payload[field.name] for field in fields(cls)})  # type: ignore[arg-type]


def _operation(payload: Mapping[str, int]) -> OperationCounts:
    return OperationCounts(
        total=payload.get("total", 0), by_status={k: v for k, v in payload.items() if k != "total"}
    )


class EmulatorAdmin(Closing):
    """``EmulatorAdmin("http://127.0.0.1:8099")``; use as a context manager to close its session."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    # -- seeding --------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def create_workspace(
        self,
        sid: str | None = None,
        friendly_name: str | None = None,
        *,
        event_callback_url: str | None = None,
        events_filter: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """A workspace (or the existing one), its Event Callback URL and filter set when given."""
        body: dict[str, Any] = {"sid": sid, "friendly_name": friendly_name}
        body["event_callback_url"] = event_callback_url
        body["events_filter"] = None if events_filter is None else list(events_filter)
        return self._call("POST", "/workspaces", body)

    def workspace(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/workspaces/{sid}")

    def set_event_callback(
        self, workspace_sid: str, url: str | None, events_filter: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """Point a workspace's Event Callbacks at ``url`` (None: none), for these types (None: all)."""
        body = {"event_callback_url": url or "", "events_filter": list(events_filter or [])}
        return self._call("POST", f"/workspaces/{workspace_sid}", body, keep_none=True)

    def create_task(
        self, workspace_sid: str | None = None, sid: str | None = None, rejections: int | None = None
    ) -> dict[str, Any]:
        body = {"workspace_sid": workspace_sid, "sid": sid, "rejections": rejections}
        return self._call("POST", "/tasks", body)

    def task(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{sid}")

    def create_worker(
        self, workspace_sid: str | None = None, sid: str | None = None, friendly_name: str | None = None
    ) -> dict[str, Any]:
        body = {"workspace_sid": workspace_sid, "sid": sid, "friendly_name": friendly_name}
        return self._call("POST", "/workers", body)

    def worker(self, sid: str) -> dict[str, Any]:
        return self._call("GET", f"/workers/{sid}")

    def create_reservation(
        self,
        *,
        sid: str | None = None,
        workspace_sid: str | None = None,
        task_sid: str | None = None,
        worker_sid: str | None = None,
        worker_name: str | None = None,
        status: str = "pending",
        task_rejections: int | None = None,
        timeout: float | None = None,
    ) -> ReservationInfo:
        """A new reservation; missing workspace, task and worker are created with it. ``timeout``:
        seconds until TaskRouter times it out if it is still pending then."""
        body = {
            "sid": sid,
            "workspace_sid": workspace_sid,
            "task_sid": task_sid,
            "worker_sid": worker_sid,
            "worker_name": worker_name,
            "status": status,
            "task_rejections": task_rejections,
            "timeout": timeout,
        }
        return _record(ReservationInfo, self._call("POST", "/reservations", body))

    def reservation(self, sid: str) -> ReservationInfo:
        return _record(ReservationInfo, self._call("GET", f"/reservations/{sid}"))

    # -- behind the clients' backs --------------------------------------------------------------

    def change(self, sid: str, action: str, *, worker_activity_sid: str | None = None) -> ReservationInfo:
        """accept, reject, wrapup, complete (another agent), timeout, cancel, rescind (TaskRouter), touch."""
        body = {"action": action, "worker_activity_sid": worker_activity_sid}
        return _record(ReservationInfo, self._call("POST", f"/reservations/{sid}/change", body))

    def time_out(self, sid: str) -> ReservationInfo:
        """TaskRouter times the pending reservation out now (a ``reservation.timeout`` event)."""
        return _record(ReservationInfo, self._call("POST", f"/reservations/{sid}/timeout"))

    def emit_event(self, sid: str, event_type: str) -> EventInfo:
        """Emit an event of the reservation that changes nothing (e.g. ``reservation.failed``)."""
        return _record(
            EventInfo, self._call("POST", f"/reservations/{sid}/events", {"event_type": event_type})
        )

    # -- events ---------------------------------------------------------------------------------

    def events(self, reservation_sid: str | None = None, since: int = 0) -> list[EventInfo]:
        payload = self._call("GET", "/events", params=_log_query(reservation_sid, since))
        return [_record(EventInfo, entry) for entry in payload["events"]]

    def deliveries(self, reservation_sid: str | None = None, since: int = 0) -> list[DeliveryInfo]:
        payload = self._call("GET", "/events/deliveries", params=_log_query(reservation_sid, since))
        return [_record(DeliveryInfo, entry) for entry in payload["deliveries"]]

    def flush_events(self, timeout: float = 10.0) -> bool:
        """Wait until every queued, held and delayed delivery has been attempted; False on timeout."""
        return bool(self._call("POST", "/events/flush", {"timeout": timeout})["idle"])

    def add_callback_fault(
        self,
        kind: str,
        *,
        rate: float = 1.0,
        seed: int = 0,
        channels: Iterable[str] | None = None,
        event_types: Iterable[str] | None = None,
        reservation_sids: Iterable[str] | None = None,
        limit: int | None = None,
        copies: int = 2,
        delay_ms: float = 0.0,
        hold: int = 1,
    ) -> str:
        """Add a delivery fault (drop, duplicate, delay, reorder); its id. See ``callback_faults``."""
        body: dict[str, Any] = {"kind": kind, "rate": rate, "seed": seed, "copies": copies}
        body.update({"delay_ms": delay_ms, "hold": hold, "limit": limit})
        for name, values in (
            ("channels", channels),
            ("event_types", event_types),
            ("reservation_sids", reservation_sids),
        ):
            if values is not None:
                body[name] = list(values)
        return str(self._call("POST", "/events/faults", body)["id"])

    def callback_faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/events/faults")["faults"])

    def clear_callback_faults(self) -> None:
        self._call("DELETE", "/events/faults")

    def set_event_streams(self, url: str | None, event_types: Iterable[str] | None = None) -> dict[str, Any]:
        """Send CloudEvents to this Event Streams webhook sink (None: stop)."""
        body = {"url": url, "event_types": None if event_types is None else list(event_types)}
        return self._call("PUT", "/event-streams", body)

    # -- inspection -----------------------------------------------------------------------------

    def transitions(self, reservation_sid: str | None = None, since: int = 0) -> list[TransitionInfo]:
        params: dict[str, str] = {"since": str(since)}
        if reservation_sid is not None:
            params["reservation_sid"] = reservation_sid
        payload = self._call("GET", "/transitions", params=params)
        return [_record(TransitionInfo, entry) for entry in payload["transitions"]]

    def counters(self) -> dict[str, Any]:
        """Everything: ``requests``, ``by_status``, ``operations`` and per-reservation counts."""
        return self._call("GET", "/counters")

    def reservation_counts(self, sid: str) -> ReservationCounts:
        payload = self._call("GET", "/counters", params={"reservation_sid": sid})
        return ReservationCounts(fetch=_operation(payload["fetch"]), update=_operation(payload["update"]))

    def updates(self, reservation_sid: str | None = None, since: int = 0) -> list[UpdateInfo]:
        """The update log: every update request, its parameters, faults, answer, and whether it landed."""
        params: dict[str, str] = {"since": str(since)}
        if reservation_sid is not None:
            params["reservation_sid"] = reservation_sid
        payload = self._call("GET", "/updates", params=params)
        return [_record(UpdateInfo, entry) for entry in payload["updates"]]

    def reset_counters(self) -> None:
        self._call("POST", "/counters/reset")

    def reset(self) -> None:
        """Forget every resource, transition, counter and fault."""
        self._call("POST", "/reset")

    # -- faults ---------------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        rate: float = 1.0,
        seed: int = 0,
        operations: Iterable[str] | None = None,
        reservation_sids: Iterable[str] | None = None,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        retry_after: int = 1,
        after_apply: bool = False,
    ) -> str:
        """Add a fault (latency, throttle, internal_error, unavailable, drop, conflict_storm,
        status_race); its id.

        ``after_apply`` (drop and latency, on updates): the update is applied first, then the
        connection is dropped or the answer delayed, as when a client times out too early.
        """
        body: dict[str, Any] = {
            "kind": kind,
            "rate": rate,
            "seed": seed,
            "latency_ms": latency_ms,
            "jitter_ms": jitter_ms,
            "retry_after": retry_after,
            "after_apply": after_apply,
        }
        if operations is not None:
            body["operations"] = list(operations)
        if reservation_sids is not None:
            body["reservation_sids"] = list(reservation_sids)
        return str(self._call("POST", "/faults", body)["id"])

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/faults")["faults"])

    def remove_fault(self, fault_id: str) -> None:
        self._call("DELETE", f"/faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    # -- the account's concurrency limit ---------------------------------------------------------

    def set_concurrency(self, limit: int | None, retry_after: int | None = None) -> dict[str, Any]:
        """Refuse requests beyond ``limit`` in flight with 429 (20429), with ``Retry-After`` when
        given; None lifts the limit. Its counts (peak, admitted, refused) start again."""
        return self._call("PUT", "/concurrency", {"limit": limit, "retry_after": retry_after})

    def concurrency(self) -> dict[str, Any]:
        """The limit, the requests in flight and their peak, and how many were admitted and refused."""
        return self._call("GET", "/concurrency")

    # -- plumbing -------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        *,
        keep_none: bool = False,
    ) -> dict[str, Any]:
        json_body: dict[str, Any] | None = None
        if body is not None:
            json_body = {key: value for key, value in body.items() if keep_none or value is not None}
        elif method != "GET":
            json_body = {}  # the admin API refuses a POST or DELETE that is not application/json
        response = self._session.request(
            method,
            f"{self.base_url}/_emulator{path}",
            json=json_body,
            params=params,
            timeout=self._timeout,
        )
        try:
            payload = response.json()
        except ValueError:
            payload = {"message": response.text}
        if response.status_code >= 400:
            raise _error(response.status_code, payload)
        if not isinstance(payload, dict):
            raise ReservationsError(f"emulator admin API: unexpected answer to {method} {path}")
        return payload


def _log_query(reservation_sid: str | None, since: int) -> dict[str, str]:
    params = {"since": str(since)}
    if reservation_sid is not None:
        params["reservation_sid"] = reservation_sid
    return params


def _error(status: int, payload: Mapping[str, Any]) -> ReservationsError:
    message = str(payload.get("message", f"HTTP {status}"))
    kind = payload.get("error")
    if kind == "InvalidParameter":
        return InvalidParameter(str(payload.get("parameter", "")), message)
    if kind == "TransitionRefused":
        return TransitionRefused(message)
    if kind == "UnknownResource":
        return UnknownResource(message)
    if kind == "ResourceConflict":
        return ResourceConflict(message)
    return ReservationsError(f"emulator admin API: HTTP {status}: {message}")
