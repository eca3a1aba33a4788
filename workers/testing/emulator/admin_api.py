"""The admin API under ``/_emulator/``: seed, change behind the clients' backs, inspect, break.

JSON in and out, and no authentication: it is meant for loopback use by tests, the demo and the
benchmarks. Never expose an emulator's port beyond the machine it runs on. Every POST, PUT and
DELETE must say ``Content-Type: application/json`` (415 otherwise, even without a body): a web page in a
developer's browser can send text/plain or a form across origins without asking, but not JSON, so
it cannot seed, change, break or reset the emulator. ops/EMULATOR.md documents every endpoint.

- ``GET  /_emulator/health``
- ``POST /_emulator/workspaces`` ``{"sid"?, "friendly_name"?}``
- ``POST /_emulator/tasks`` ``{"workspace_sid"?, "sid"?, "rejections"?}``; ``GET /_emulator/tasks/{sid}``
- ``POST /_emulator/workers`` ``{"workspace_sid"?, "sid"?, "friendly_name"?}``;
  ``GET /_emulator/workers/{sid}``
- ``POST /_emulator/reservations`` ``{"sid"?, "workspace_sid"?, "task_sid"?, "worker_sid"?,
  "worker_name"?, "status"?, "task_rejections"?}`` creates what is missing and returns the
  reservation with its ``version`` and ``etag``; ``GET /_emulator/reservations/{sid}``
- ``POST /_emulator/reservations/{sid}/change`` ``{"action": accept|reject|wrapup|complete|timeout|
  cancel|rescind|touch, "worker_activity_sid"?}``: another agent or TaskRouter itself acts
- ``GET  /_emulator/transitions?reservation_sid=&since=``: the transition log
- ``GET  /_emulator/updates?reservation_sid=&since=``: the update log (every update request, its
  parameters, its traceparent, the faults that struck it, its answer and whether it landed)
- ``GET  /_emulator/counters?reservation_sid=``; ``POST /_emulator/counters/reset``
- ``GET|POST|DELETE /_emulator/faults``, ``DELETE /_emulator/faults/{id}``
- ``GET|PUT /_emulator/concurrency`` ``{"limit": N|null, "retry_after": s|null}``: the account's
  concurrency limit (429, error 20429, beyond N requests in flight), its peak and refusals
- ``POST /_emulator/reset``: forget everything (model, logs, counters, faults, events; the
  concurrency limit goes back to the command line's)

Events (ops/EMULATOR.md):

- ``POST /_emulator/workspaces`` also takes ``"event_callback_url"`` and ``"events_filter"``;
  ``GET|POST /_emulator/workspaces/{sid}`` reads or changes them (``null`` or ``""`` clears)
- ``POST /_emulator/reservations`` also takes ``"timeout"`` (seconds until TaskRouter times the
  pending reservation out); ``POST /_emulator/reservations/{sid}/timeout``: TaskRouter times it out now
- ``POST /_emulator/reservations/{sid}/events`` ``{"event_type"}``: emit an event that changes
  nothing (``reservation.failed``, which the state machine cannot reach, or any other type)
- ``GET  /_emulator/events?reservation_sid=&since=``: every event, with its sequence number
- ``GET  /_emulator/events/deliveries?reservation_sid=&since=``: every delivery attempt and its outcome
- ``POST /_emulator/events/flush`` ``{"timeout"?}``: wait until nothing is queued, held or in flight
- ``GET|POST|DELETE /_emulator/events/faults``, ``DELETE /_emulator/events/faults/{id}``: drop,
  duplicate, delay, reorder
- ``GET|PUT /_emulator/event-streams`` ``{"url", "event_types"?}``: the Event Streams sink (null: none)
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from workers.core.parameters import Scope
from workers.core.state_machine import Status
from workers.errors import (
    InvalidParameter,
    ReservationsError,
    ResourceConflict,
    TransitionRefused,
    UnknownResource,
    UnsupportedMediaType,
)
from workers.testing.emulator.events import Event
from workers.testing.emulator.events_api import workspace_changes
from workers.testing.emulator.hub import StreamSink
from workers.testing.emulator.model import Reservation, Task, Transition, Worker, Workspace
from workers.testing.emulator.sender import Delivery
from workers.testing.emulator.settings import is_callback_url
from workers.testing.emulator.state import EmulatorState
from workers.testing.emulator.updates import UpdateEntry
from workers.testing.emulator.wire import (
    JSON_CONTENT_TYPE,
    REQUEST_ID_HEADER,
    encode,
    new_request_id,
    reservation_path,
)

PREFIX = "/_emulator"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AdminApi:
    def __init__(self, state: EmulatorState) -> None:
        self._store, self._counters, self._faults = state.store, state.counters, state.faults
        self._updates = state.updates
        self._settings = state.settings
        self._events, self._callback_faults = state.events, state.callback_faults
        self._concurrency = state.concurrency

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/health", _json(self.health)),
            web.post(f"{PREFIX}/workspaces", _json(self.create_workspace)),
            web.post(f"{PREFIX}/tasks", _json(self.create_task)),
            web.get(f"{PREFIX}/tasks/{{sid}}", _json(self.get_task)),
            web.post(f"{PREFIX}/workers", _json(self.create_worker)),
            web.get(f"{PREFIX}/workers/{{sid}}", _json(self.get_worker)),
            web.post(f"{PREFIX}/reservations", _json(self.create_reservation)),
            web.get(f"{PREFIX}/reservations/{{sid}}", _json(self.get_reservation)),
            web.post(f"{PREFIX}/reservations/{{sid}}/change", _json(self.change_reservation)),
            web.get(f"{PREFIX}/transitions", _json(self.transitions)),
            web.get(f"{PREFIX}/updates", _json(self.updates)),
            web.get(f"{PREFIX}/counters", _json(self.counters)),
            web.post(f"{PREFIX}/counters/reset", _json(self.reset_counters)),
            web.get(f"{PREFIX}/faults", _json(self.list_faults)),
            web.post(f"{PREFIX}/faults", _json(self.add_fault)),
            web.delete(f"{PREFIX}/faults", _json(self.clear_faults)),
            web.delete(f"{PREFIX}/faults/{{id}}", _json(self.remove_fault)),
            web.get(f"{PREFIX}/concurrency", _json(self.get_concurrency)),
            web.put(f"{PREFIX}/concurrency", _json(self.set_concurrency)),
            web.post(f"{PREFIX}/reset", _json(self.reset)),
            web.get(f"{PREFIX}/workspaces/{{sid}}", _json(self.get_workspace)),
            web.post(f"{PREFIX}/workspaces/{{sid}}", _json(self.update_workspace)),
            web.post(f"{PREFIX}/reservations/{{sid}}/timeout", _json(self.time_out)),
            web.post(f"{PREFIX}/reservations/{{sid}}/events", _json(self.emit_event)),
            web.get(f"{PREFIX}/events", _json(self.list_events)),
            web.get(f"{PREFIX}/events/deliveries", _json(self.deliveries)),
            web.post(f"{PREFIX}/events/flush", _json(self.flush)),
            web.get(f"{PREFIX}/events/faults", _json(self.list_callback_faults)),
            web.post(f"{PREFIX}/events/faults", _json(self.add_callback_fault)),
            web.delete(f"{PREFIX}/events/faults", _json(self.clear_callback_faults)),
            web.delete(f"{PREFIX}/events/faults/{{id}}", _json(self.remove_callback_fault)),
            web.get(f"{PREFIX}/event-streams", _json(self.get_sink)),
            web.put(f"{PREFIX}/event-streams", _json(self.set_sink)),
        ]

    async def health(self, request: web.Request) -> tuple[int, object]:
        return 200, {
            "status": "ok",
            "account_sid": self._settings.account_sid,
            "strict_headers": self._settings.strict_headers,
            "events": self._events.sender.stats(),
        }

    async def create_workspace(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        workspace = self._store.create_workspace(_opt_str(spec, "sid"), _opt_str(spec, "friendly_name"))
        changes = workspace_changes(_event_settings(spec))
        if changes:
            workspace = self._store.update_workspace(workspace.sid, **changes)  # type: ignore[arg-type]
        return 201, workspace_view(workspace)

    async def get_workspace(self, request: web.Request) -> tuple[int, object]:
        return 200, workspace_view(self._store.workspace(request.match_info["sid"]))

    async def update_workspace(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        changes = workspace_changes({**_event_settings(spec), **_names(spec)})
        workspace = self._store.update_workspace(request.match_info["sid"], **changes)  # type: ignore[arg-type]
        return 200, workspace_view(workspace)

    async def create_task(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        task = self._store.create_task(
            _opt_str(spec, "workspace_sid"), _opt_str(spec, "sid"), _opt_int(spec, "rejections")
        )
        return 201, task_view(task, self._store.task_reservation_sids(task.sid))

    async def get_task(self, request: web.Request) -> tuple[int, object]:
        task = self._store.task(request.match_info["sid"])
        return 200, task_view(task, self._store.task_reservation_sids(task.sid))

    async def create_worker(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        worker = self._store.create_worker(
            _opt_str(spec, "workspace_sid"), _opt_str(spec, "sid"), _opt_str(spec, "friendly_name")
        )
        return 201, worker_view(worker)

    async def get_worker(self, request: web.Request) -> tuple[int, object]:
        return 200, worker_view(self._store.worker(request.match_info["sid"]))

    async def create_reservation(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        status = _opt_str(spec, "status") or Status.PENDING.value
        if status not in {member.value for member in Status}:
            raise InvalidParameter("status", f"Unknown reservation status {status!r}")
        reservation = self._store.create_reservation(
            sid=_opt_str(spec, "sid"),
            workspace_sid=_opt_str(spec, "workspace_sid"),
            task_sid=_opt_str(spec, "task_sid"),
            worker_sid=_opt_str(spec, "worker_sid"),
            worker_name=_opt_str(spec, "worker_name"),
            status=Status(status),
            task_rejections=_opt_int(spec, "task_rejections"),
        )
        timeout = spec.get("timeout")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise InvalidParameter("timeout", "Field 'timeout' must be a positive number of seconds")
            self._events.schedule_timeout(reservation.sid, float(timeout))
        return 201, reservation_view(reservation)

    async def get_reservation(self, request: web.Request) -> tuple[int, object]:
        return 200, reservation_view(self._store.reservation(request.match_info["sid"]))

    async def change_reservation(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        action = _opt_str(spec, "action")
        if action is None:
            raise InvalidParameter("action", "Field 'action' is required")
        reservation = self._store.change(
            request.match_info["sid"],
            action,
            worker_activity_sid=_opt_str(spec, "worker_activity_sid"),
            request_id=new_request_id(),
        )
        return 200, reservation_view(reservation)

    async def time_out(self, request: web.Request) -> tuple[int, object]:
        sid = request.match_info["sid"]
        current = self._store.reservation(sid)
        if self._events.time_out(sid) is None:
            raise TransitionRefused(
                f"Reservation {sid} is {current.status.value}: only a pending one times out"
            )
        return 200, reservation_view(self._store.reservation(sid))

    async def emit_event(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        event_type = _opt_str(spec, "event_type")
        if not event_type:
            raise InvalidParameter("event_type", "Field 'event_type' is required")
        reservation = self._store.reservation(request.match_info["sid"])
        return 201, event_view(self._events.emit(event_type, reservation, "admin"))

    async def list_events(self, request: web.Request) -> tuple[int, object]:
        since = _since(request)
        sid = request.query.get("reservation_sid")
        entries = [
            event
            for event in self._events.log.entries()
            if event.sequence > since and (sid is None or event.reservation_sid == sid)
        ]
        return 200, {"events": [event_view(event) for event in entries]}

    async def deliveries(self, request: web.Request) -> tuple[int, object]:
        entries = self._events.sender.log.entries(request.query.get("reservation_sid"), _since(request))
        return 200, {"deliveries": [delivery_view(entry) for entry in entries]}

    async def flush(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        timeout = spec.get("timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidParameter("timeout", "Field 'timeout' must be a number of seconds")
        sender = self._events.sender
        idle = await asyncio.to_thread(sender.wait_idle, float(timeout))
        return 200, {"idle": idle, **sender.stats()}

    async def list_callback_faults(self, request: web.Request) -> tuple[int, object]:
        return 200, {"faults": self._callback_faults.describe()}

    async def add_callback_fault(self, request: web.Request) -> tuple[int, object]:
        return 201, self._callback_faults.add(await _body(request)).describe()

    async def remove_callback_fault(self, request: web.Request) -> tuple[int, object]:
        fault_id = request.match_info["id"]
        if not self._callback_faults.remove(fault_id):
            raise UnknownResource(f"Callback fault {fault_id} does not exist")
        return 200, {"removed": fault_id}

    async def clear_callback_faults(self, request: web.Request) -> tuple[int, object]:
        self._callback_faults.clear()
        return 200, {"faults": []}

    async def get_sink(self, request: web.Request) -> tuple[int, object]:
        return 200, sink_view(self._events.sink)

    async def set_sink(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        url = _opt_str(spec, "url")
        if url is None:
            self._events.sink = None
            return 200, sink_view(None)
        if not is_callback_url(url):
            raise InvalidParameter("url", f"The sink URL {url!r} must be an absolute http(s) URL")
        types = _event_types(spec.get("event_types"))
        self._events.sink = StreamSink(url, types)
        return 200, sink_view(self._events.sink)

    async def transitions(self, request: web.Request) -> tuple[int, object]:
        since = request.query.get("since", "0")
        if not since.isdigit():
            raise InvalidParameter("since", "Query parameter 'since' must be a sequence number")
        entries = self._store.transitions(request.query.get("reservation_sid"), int(since))
        return 200, {"transitions": [transition_view(entry) for entry in entries]}

    async def updates(self, request: web.Request) -> tuple[int, object]:
        since = request.query.get("since", "0")
        if not since.isdigit():
            raise InvalidParameter("since", "Query parameter 'since' must be a sequence number")
        entries = self._updates.entries(request.query.get("reservation_sid"), int(since))
        return 200, {"updates": [update_view(entry) for entry in entries]}

    async def counters(self, request: web.Request) -> tuple[int, object]:
        sid = request.query.get("reservation_sid")
        if sid is not None:
            return 200, self._counters.for_reservation(sid)
        return 200, self._counters.snapshot()

    async def reset_counters(self, request: web.Request) -> tuple[int, object]:
        self._counters.reset()
        return 200, {"reset": True}

    async def list_faults(self, request: web.Request) -> tuple[int, object]:
        return 200, {"faults": self._faults.describe()}

    async def add_fault(self, request: web.Request) -> tuple[int, object]:
        return 201, self._faults.add(await _body(request)).describe()

    async def remove_fault(self, request: web.Request) -> tuple[int, object]:
        fault_id = request.match_info["id"]
        if not self._faults.remove(fault_id):
            raise UnknownResource(f"Fault {fault_id} does not exist")
        return 200, {"removed": fault_id}

    async def clear_faults(self, request: web.Request) -> tuple[int, object]:
        self._faults.clear()
        return 200, {"faults": []}

    async def get_concurrency(self, request: web.Request) -> tuple[int, object]:
        return 200, self._concurrency.describe()

    async def set_concurrency(self, request: web.Request) -> tuple[int, object]:
        self._concurrency.configure(await _body(request))
        return 200, self._concurrency.describe()

    async def reset(self, request: web.Request) -> tuple[int, object]:
        self._concurrency.set(self._settings.concurrency_limit, self._settings.concurrency_retry_after)
        self._faults.clear()
        self._callback_faults.clear()
        self._events.reset()
        self._store.reset()
        self._counters.reset()
        self._updates.reset()
        return 200, {"reset": True}


# -- views ----------------------------------------------------------------------------------------


def workspace_view(workspace: Workspace) -> dict[str, object]:
    return {
        "sid": workspace.sid,
        "friendly_name": workspace.friendly_name,
        "event_callback_url": workspace.event_callback_url,
        "events_filter": None if workspace.events_filter is None else list(workspace.events_filter),
    }


def event_view(event: Event) -> dict[str, object]:
    return {
        **_pick(event, "sequence", "sid", "event_type", "account_sid", "workspace_sid", "reservation_sid"),
        **_pick(event, "task_sid", "worker_sid", "worker_name", "status", "timestamp_ms", "actor_type"),
        **_pick(event, "source", "description"),
    }


def delivery_view(entry: Delivery) -> dict[str, object]:
    return {
        **_pick(entry, "sequence", "at", "event_sid", "event_type", "reservation_sid", "channel", "url"),
        **_pick(entry, "attempt", "copy", "outcome"),
        "faults": list(entry.faults),
    }


def sink_view(sink: StreamSink | None) -> dict[str, object]:
    if sink is None:
        return {"url": None, "event_types": None}
    return {"url": sink.url, "event_types": None if sink.event_types is None else list(sink.event_types)}


def task_view(task: Task, reservation_sids: list[str]) -> dict[str, object]:
    return {
        "sid": task.sid,
        "workspace_sid": task.workspace_sid,
        "status": "canceled" if task.canceled else "active",
        "rejections": task.rejections,
        "reservation_sids": reservation_sids,
    }


def worker_view(worker: Worker) -> dict[str, object]:
    return _pick(worker, "sid", "workspace_sid", "friendly_name", "activity_sid")


def reservation_view(reservation: Reservation) -> dict[str, object]:
    return {
        **_pick(reservation, "sid", "workspace_sid", "task_sid", "worker_sid", "worker_name", "status"),
        **_pick(reservation, "version", "etag", "date_created", "date_updated", "worker_activity_sid"),
        "task_path": reservation_path(Scope.TASK, reservation),
        "worker_path": reservation_path(Scope.WORKER, reservation),
    }


def transition_view(entry: Transition) -> dict[str, object]:
    return _pick(
        entry,
        *("sequence", "reservation_sid", "task_sid", "worker_sid", "workspace_sid", "from_status"),
        *("to_status", "version_before", "version_after", "source", "request_id", "requested", "at", "note"),
    )


def update_view(entry: UpdateEntry) -> dict[str, object]:
    return {
        **_pick(entry, "sequence", "at", "reservation_sid", "request_id", "scope", "params", "if_match"),
        **_pick(entry, "answer", "landed_version", "from_status", "to_status", "traceparent"),
        "faults": list(entry.faults),
        "landed": entry.landed,
    }


def _pick(record: object, *names: str) -> dict[str, object]:
    """The named attributes of a record, as JSON values (an enum as its value)."""
    picked = {name: getattr(record, name) for name in names}
    return {name: value.value if isinstance(value, enum.Enum) else value for name, value in picked.items()}


# -- plumbing -------------------------------------------------------------------------------------


def _json(handler: Callable[[web.Request], Awaitable[tuple[int, object]]]) -> Handler:
    """Run an admin handler; map the project's errors to Twilio-shaped JSON error bodies."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        try:
            if request.method not in ("GET", "HEAD") and request.content_type != "application/json":
                raise UnsupportedMediaType(
                    f"{request.method} {request.path} needs Content-Type: application/json,"
                    f" not {request.content_type or 'none'} (a browser cannot send that across origins"
                    " unasked)"
                )
            status, payload = await handler(request)
            body = encode(payload)
        except InvalidParameter as invalid:
            status, body = 400, _error(400, 20001, invalid, parameter=invalid.parameter)
        except TransitionRefused as refused:
            status, body = 400, _error(400, 20001, refused)
        except UnknownResource as missing:
            status, body = 404, _error(404, 20404, missing)
        except ResourceConflict as conflict:
            status, body = 409, _error(409, 20409, conflict)
        except UnsupportedMediaType as unsupported:
            status, body = 415, _error(415, 20415, unsupported)
        return web.Response(
            status=status,
            body=body,
            headers={REQUEST_ID_HEADER: request_id, "Content-Type": JSON_CONTENT_TYPE},
        )

    return wrapped


def _error(status: int, code: int, error: ReservationsError, parameter: str | None = None) -> bytes:
    """Twilio's error shape, plus the project's error class (and parameter) for the admin client."""
    body: dict[str, object] = {
        "code": code,
        "message": str(error),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
        "error": type(error).__name__,
    }
    if parameter is not None:
        body["parameter"] = parameter
    return encode(body)


async def _body(request: web.Request) -> Mapping[str, object]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        spec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidParameter("body", "The request body is not valid JSON") from None
    if not isinstance(spec, dict):
        raise InvalidParameter("body", "The request body must be a JSON object")
    return spec


def _opt_str(spec: Mapping[str, object], name: str) -> str | None:
    value = spec.get(name)
    if value is None or isinstance(value, str):
        return value
    raise InvalidParameter(name, f"Field {name!r} must be a string")


def _since(request: web.Request) -> int:
    since = request.query.get("since", "0")
    if not since.isdigit():
        raise InvalidParameter("since", "Query parameter 'since' must be a sequence number")
    return int(since)


def _event_types(value: object) -> tuple[str, ...] | None:
    """Event types as a JSON list of strings or one comma-separated string (None: all)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidParameter("event_types", "Event types are a list of strings or a comma-separated string")
    types = tuple(item.strip() for item in value if item.strip())
    return types or None


def _event_settings(spec: Mapping[str, object]) -> dict[str, str]:
    """A workspace's event settings from an admin body, in the form ``workspace_changes`` reads."""
    settings: dict[str, str] = {}
    if "event_callback_url" in spec:
        settings["event_callback_url"] = _opt_str(spec, "event_callback_url") or ""
    if "events_filter" in spec:
        types = _event_types(spec["events_filter"])
        settings["events_filter"] = "" if types is None else ",".join(types)
    return settings


def _names(spec: Mapping[str, object]) -> dict[str, str]:
    name = _opt_str(spec, "friendly_name")
    return {} if name is None else {"friendly_name": name}


def _opt_int(spec: Mapping[str, object], name: str) -> int | None:
    value = spec.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise InvalidParameter(name, f"Field {name!r} must be an integer")
