"""The admin API under ``/_emulator/``: seed, change behind the clients' backs, inspect, break.

JSON in and out, and no authentication: it is meant for loopback use by tests, the demo and the
benchmarks. Never expose an emulator's port beyond the machine it runs on.

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
- ``POST /_emulator/reset``: forget everything (model, logs, counters, faults)
"""

from __future__ import annotations

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
)
from workers.testing.emulator.model import Reservation, Task, Transition, Worker, Workspace
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
            web.post(f"{PREFIX}/reset", _json(self.reset)),
        ]

    async def health(self, request: web.Request) -> tuple[int, object]:
        return 200, {
            "status": "ok",
            "account_sid": self._settings.account_sid,
            "strict_headers": self._settings.strict_headers,
        }

    async def create_workspace(self, request: web.Request) -> tuple[int, object]:
        spec = await _body(request)
        workspace = self._store.create_workspace(_opt_str(spec, "sid"), _opt_str(spec, "friendly_name"))
        return 201, workspace_view(workspace)

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

    async def reset(self, request: web.Request) -> tuple[int, object]:
        self._faults.clear()
        self._store.reset()
        self._counters.reset()
        self._updates.reset()
        return 200, {"reset": True}


# -- views ----------------------------------------------------------------------------------------


def workspace_view(workspace: Workspace) -> dict[str, object]:
    return {"sid": workspace.sid, "friendly_name": workspace.friendly_name}


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


def _opt_int(spec: Mapping[str, object], name: str) -> int | None:
    value = spec.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise InvalidParameter(name, f"Field {name!r} must be an integer")
