"""TaskRouter's Workspace and Events resources over HTTP, as the twilio SDK calls them.

- ``GET /v1/Workspaces/{ws}``, ``POST /v1/Workspaces/{ws}``: fetch a workspace, update its
  ``FriendlyName``, ``EventCallbackUrl`` and ``EventsFilter`` (``workspaces(ws).update(...)``).
- ``GET /v1/Workspaces/{ws}/Events``: the workspace's events, newest first, filtered by
  ``StartDate``, ``EndDate``, ``Minutes`` (default 15, when no ``StartDate``), ``EventType``,
  ``ReservationSid``, ``TaskSid``, ``WorkerSid``, ``Sid`` (and ``TaskQueueSid``, ``WorkflowSid``,
  ``TaskChannel``, which no emulated event carries), paged by ``PageSize`` (1 to 1000, default 50)
  and ``PageToken``: ``meta.next_page_url`` carries the filters on, and a page never shifts when
  newer events arrive. Events older than 30 days are not served, as with Twilio.
- ``GET /v1/Workspaces/{ws}/Events/{sid}``: one event.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from workers.errors import InvalidParameter, UnknownResource
from workers.testing.emulator.api import _base_url, _error, _guard, _unauthorized
from workers.testing.emulator.events import Event, event_resource
from workers.testing.emulator.model import Workspace
from workers.testing.emulator.settings import BasicAuth, is_callback_url, parse_events_filter
from workers.testing.emulator.state import EmulatorState
from workers.testing.emulator.wire import JSON_CONTENT_TYPE, REQUEST_ID_HEADER, encode, new_request_id

WORKSPACE = "/v1/Workspaces/{workspace_sid}"
EVENTS = WORKSPACE + "/Events"
RETENTION_SECONDS = 30 * 24 * 3600
DEFAULT_MINUTES = 15
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
# Query parameters a next page carries on as they were.
_FILTERS = (
    "StartDate",
    "EndDate",
    "Minutes",
    "EventType",
    "ReservationSid",
    "TaskSid",
    "WorkerSid",
    "Sid",
    "TaskQueueSid",
    "WorkflowSid",
    "TaskChannel",
)
# Filters on fields that no emulated event carries: given, they match nothing.
_UNMODELLED = ("TaskQueueSid", "WorkflowSid", "TaskChannel")


class EventsApi:
    def __init__(self, state: EmulatorState) -> None:
        self._store, self._events = state.store, state.events
        self._account_sid = state.settings.account_sid
        self._auth = BasicAuth(state.settings.credentials())

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(WORKSPACE, _guard(self.fetch_workspace)),
            web.post(WORKSPACE, _guard(self.update_workspace)),
            web.get(EVENTS, _guard(self.list_events)),
            web.get(EVENTS + "/{sid}", _guard(self.fetch_event)),
        ]

    async def fetch_workspace(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        if not self._auth.allows(request.headers.get("Authorization")):
            return _unauthorized(request_id)
        workspace = self._workspace(request)
        if workspace is None:
            return _not_found(request, request_id)
        return _json(workspace_resource(workspace, _base_url(request), self._account_sid), request_id)

    async def update_workspace(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        if not self._auth.allows(request.headers.get("Authorization")):
            return _unauthorized(request_id)
        workspace = self._workspace(request)
        if workspace is None:
            return _not_found(request, request_id)
        try:
            body = (await request.read()).decode()
            form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
            changes = workspace_changes(form)
        except (InvalidParameter, UnicodeDecodeError) as invalid:
            message = invalid.message if isinstance(invalid, InvalidParameter) else "The body is not UTF-8"
            return _error(400, 20001, message, request_id)
        updated = self._store.update_workspace(workspace.sid, **changes)  # type: ignore[arg-type]
        return _json(workspace_resource(updated, _base_url(request), self._account_sid), request_id)

    async def list_events(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        if not self._auth.allows(request.headers.get("Authorization")):
            return _unauthorized(request_id)
        workspace = self._workspace(request)
        if workspace is None:
            return _not_found(request, request_id)
        query = request.query
        try:
            selected = select_events(self._events.log.entries(), workspace.sid, query, time.time())
            page_size = _page_size(query.get("PageSize"))
            before = _token_sequence(query.get("PageToken"))
        except InvalidParameter as invalid:
            return _error(400, 20001, invalid.message, request_id)
        if before is not None:
            selected = [event for event in selected if event.sequence < before]
        page, rest = selected[:page_size], selected[page_size:]
        base = _base_url(request)
        url = base + request.path
        filters = {name: query[name] for name in _FILTERS if name in query}
        number = int(query.get("Page", "0")) if query.get("Page", "0").isdigit() else 0
        first = f"{url}?{urlencode({**filters, 'PageSize': page_size, 'Page': 0})}"
        this = f"{url}?{urlencode({**filters, 'PageSize': page_size, 'Page': number, **_token(before)})}"
        next_page = None
        if rest:
            token = {"PageToken": f"PT{page[-1].sequence:x}"}
            next_page = f"{url}?{urlencode({**filters, 'PageSize': page_size, 'Page': number + 1, **token})}"
        body = {
            "events": [event_resource(event, base) for event in page],
            "meta": {
                "page": number,
                "page_size": page_size,
                "first_page_url": first,
                "previous_page_url": None,
                "url": this,
                "next_page_url": next_page,
                "key": "events",
            },
        }
        return _json(body, request_id)

    async def fetch_event(self, request: web.Request) -> web.StreamResponse:
        request_id = new_request_id()
        if not self._auth.allows(request.headers.get("Authorization")):
            return _unauthorized(request_id)
        event = self._events.log.get(request.match_info["sid"])
        if event is None or event.workspace_sid != request.match_info["workspace_sid"]:
            return _not_found(request, request_id)
        return _json(event_resource(event, _base_url(request)), request_id)

    def _workspace(self, request: web.Request) -> Workspace | None:
        sid = request.match_info["workspace_sid"]
        try:
            return self._store.workspace(sid)
        except UnknownResource:
            return None


def workspace_changes(form: Mapping[str, str]) -> dict[str, object]:
    """A workspace update's changes from Twilio's parameter names (or the admin API's snake-case
    ones): a blank ``EventCallbackUrl`` or ``EventsFilter`` clears it. Raises InvalidParameter."""
    changes: dict[str, object] = {}
    name = form.get("FriendlyName", form.get("friendly_name"))
    if name:
        changes["friendly_name"] = name
    for wire, snake in (("EventCallbackUrl", "event_callback_url"), ("EventsFilter", "events_filter")):
        if wire not in form and snake not in form:
            continue
        value = form.get(wire, form.get(snake)) or None
        if snake == "events_filter":
            changes[snake] = parse_events_filter(value)
            continue
        if value is not None and not is_callback_url(value):
            message = f"{wire} must be an absolute http(s) URL with valid connection overrides, not {value!r}"
            raise InvalidParameter(wire, message)
        changes[snake] = value
    return changes


def workspace_resource(workspace: Workspace, base: str, account_sid: str) -> dict[str, object]:
    """The Workspace resource's JSON (twilio-python's ``WorkspaceInstance`` fields)."""
    url = f"{base}/v1/Workspaces/{workspace.sid}"
    return {
        "account_sid": account_sid,
        "date_created": workspace.date_created,
        "date_updated": workspace.date_updated,
        "default_activity_name": "Offline",
        "default_activity_sid": None,
        "event_callback_url": workspace.event_callback_url,
        "events_filter": None if workspace.events_filter is None else ",".join(workspace.events_filter),
        "friendly_name": workspace.friendly_name,
        "multi_task_enabled": True,
        "prioritize_queue_order": "FIFO",
        "sid": workspace.sid,
        "timeout_activity_name": "Offline",
        "timeout_activity_sid": None,
        "url": url,
        "links": {
            "events": f"{url}/Events",
            "tasks": f"{url}/Tasks",
            "workers": f"{url}/Workers",
        },
    }


def select_events(
    events: list[Event], workspace_sid: str, query: Mapping[str, str], now: float
) -> list[Event]:
    """The events a list request asks for, newest first (raises InvalidParameter on a bad filter)."""
    end = _date(query, "EndDate")
    start = _date(query, "StartDate")
    if start is None:
        minutes = query.get("Minutes", str(DEFAULT_MINUTES))
        if not minutes.isdigit() or int(minutes) < 1:
            raise InvalidParameter("Minutes", f"Invalid value '{minutes}' for parameter 'Minutes'")
        start = now - int(minutes) * 60
    start = max(start, now - RETENTION_SECONDS)
    if any(name in query for name in _UNMODELLED):
        return []
    wanted = {
        "event_type": query.get("EventType"),
        "reservation_sid": query.get("ReservationSid"),
        "task_sid": query.get("TaskSid"),
        "worker_sid": query.get("WorkerSid"),
        "sid": query.get("Sid"),
    }
    start_ms, end_ms = int(start * 1000), None if end is None else int(end * 1000)
    selected = [
        event
        for event in events
        if event.workspace_sid == workspace_sid
        and event.timestamp_ms >= start_ms
        and (end_ms is None or event.timestamp_ms <= end_ms)
        and all(value is None or getattr(event, name) == value for name, value in wanted.items())
    ]
    selected.reverse()
    return selected


def _date(query: Mapping[str, str], name: str) -> float | None:
    """An ISO 8601 date-time (or date) in GMT, as epoch seconds."""
    raw = query.get(name)
    if raw is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(name, f"Invalid value '{raw}' for parameter '{name}': not ISO 8601") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        message = f"Invalid value '{raw}' for parameter 'PageSize': must be between 1 and {MAX_PAGE_SIZE}"
        raise InvalidParameter("PageSize", message)
    return int(raw)


def _token_sequence(raw: str | None) -> int | None:
    """A page token: the events before this sequence number (tokens are opaque to clients)."""
    if raw is None:
        return None
    try:
        if not raw.startswith("PT"):
            raise ValueError(raw)
        return int(raw[2:], 16)
    except ValueError:
        raise InvalidParameter("PageToken", f"Invalid value '{raw}' for parameter 'PageToken'") from None


def _token(before: int | None) -> dict[str, str]:
    return {} if before is None else {"PageToken": f"PT{before:x}"}


def _json(body: object, request_id: str) -> web.Response:
    return web.Response(
        body=encode(body), headers={REQUEST_ID_HEADER: request_id, "Content-Type": JSON_CONTENT_TYPE}
    )


def _not_found(request: web.Request, request_id: str) -> web.Response:
    return _error(404, 20404, f"The requested resource {request.path} was not found", request_id)
