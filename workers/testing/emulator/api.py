"""TaskRouter's Reservation API over HTTP: routes, auth, error bodies, ETag and If-Match.

The hot path (fetch and update) is kept lean for the benchmarks: no middleware, no logging,
the accepted ``Authorization`` headers precomputed, one dict lookup for the reservation, and
the check-and-set in one synchronous store call with no await in between.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from aiohttp import web

from workers.core.parameters import RESERVATION_STATUSES, Scope, parse_update_form
from workers.errors import IfMatchMismatch, InvalidParameter, TransitionRefused, UnknownResource
from workers.testing.emulator.counters import DROPPED
from workers.testing.emulator.faults import FaultKind, Plan
from workers.testing.emulator.model import Reservation
from workers.testing.emulator.settings import BasicAuth
from workers.testing.emulator.state import EmulatorState
from workers.testing.emulator.updates import DROPPED as DROPPED_ANSWER
from workers.testing.emulator.wire import (
    JSON_CONTENT_TYPE,
    REQUEST_ID_HEADER,
    Operation,
    encode,
    error_body,
    etag_headers,
    list_envelope,
    list_etag,
    new_request_id,
    parse_if_match,
    representation,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TASK_RESERVATIONS = "/v1/Workspaces/{workspace_sid}/Tasks/{task_sid}/Reservations"
WORKER_RESERVATIONS = "/v1/Workspaces/{workspace_sid}/Workers/{worker_sid}/Reservations"

# Twilio error codes by HTTP status, with Twilio's messages.
_FAULT_STATUS: dict[FaultKind, tuple[int, int, str]] = {
    FaultKind.THROTTLE: (429, 20429, "Too Many Requests"),
    FaultKind.INTERNAL_ERROR: (500, 20500, "Internal Server Error"),
    FaultKind.UNAVAILABLE: (503, 20503, "Service Unavailable"),
}
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50


class TwilioApi:
    """The six reservation operations (fetch, update, list; task- and worker-scoped)."""

    def __init__(self, state: EmulatorState) -> None:
        self._store, self._counters, self._faults = state.store, state.counters, state.faults
        self._updates = state.updates
        self._account_sid = state.settings.account_sid
        self._auth = BasicAuth(state.settings.credentials())
        self._etag_names = etag_headers(state.settings.strict_headers)
        self._concurrency = state.concurrency

    def routes(self) -> list[web.RouteDef]:
        item = "/{sid}"
        fetch, update, listing = Operation.FETCH, Operation.UPDATE, Operation.LIST
        return [
            web.get(TASK_RESERVATIONS + item, _guard(self._limited(self.fetch_task, fetch, Scope.TASK))),
            web.post(TASK_RESERVATIONS + item, _guard(self._limited(self.update_task, update, Scope.TASK))),
            web.get(TASK_RESERVATIONS, _guard(self._limited(self.list_task, listing, Scope.TASK))),
            web.get(
                WORKER_RESERVATIONS + item, _guard(self._limited(self.fetch_worker, fetch, Scope.WORKER))
            ),
            web.post(
                WORKER_RESERVATIONS + item, _guard(self._limited(self.update_worker, update, Scope.WORKER))
            ),
            web.get(WORKER_RESERVATIONS, _guard(self._limited(self.list_worker, listing, Scope.WORKER))),
        ]

    def _limited(self, handler: Handler, operation: Operation, scope: Scope) -> Handler:
        """``handler`` under the account's concurrency limit: refused with 429 (20429) beyond it."""
        limit = self._concurrency

        async def limited(request: web.Request) -> web.StreamResponse:
            if limit.limit is None:
                return await handler(request)
            if not limit.admit():
                return self._over_limit(request, operation, scope)
            try:
                response = await handler(request)
                if not response.prepared:
                    response.headers.update(limit.headers())
                return response
            finally:
                limit.done()

        return limited

    def _over_limit(self, request: web.Request, operation: Operation, scope: Scope) -> web.StreamResponse:
        request_id, sid = new_request_id(), request.match_info.get("sid")
        self._counters.record(operation, sid, 429)
        message = "Too many requests: the account exceeds its allowed concurrency"
        response = _error(429, 20429, message, request_id)
        response.headers.update(self._concurrency.headers())
        if self._concurrency.retry_after is not None:
            response.headers["Retry-After"] = str(self._concurrency.retry_after)
        if operation is Operation.UPDATE and sid is not None:
            note = _UpdateNote(sid, request_id, str(scope), request.headers.get("If-Match"), None)
            return self._noted(note, response, 429)
        return response

    async def fallback(self, request: web.Request) -> web.StreamResponse:
        """Anything else: 401 without auth, 405 for a known path, 404 otherwise."""
        request_id = new_request_id()
        if not self._auth.allows(request.headers.get("Authorization")):
            return _unauthorized(request_id)
        if request.path.startswith("/v1/Workspaces/") and "/Reservations" in request.path:
            return _error(405, 20004, "Method not allowed", request_id)
        return _error(404, 20404, f"The requested resource {request.path} was not found", request_id)

    # -- the six operations -------------------------------------------------------------------------

    async def fetch_task(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, Scope.TASK)

    async def fetch_worker(self, request: web.Request) -> web.StreamResponse:
        return await self._fetch(request, Scope.WORKER)

    async def update_task(self, request: web.Request) -> web.StreamResponse:
        return await self._update(request, Scope.TASK)

    async def update_worker(self, request: web.Request) -> web.StreamResponse:
        return await self._update(request, Scope.WORKER)

    async def list_task(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._list(request, Scope.TASK, info["workspace_sid"], info["task_sid"])

    async def list_worker(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._list(request, Scope.WORKER, info["workspace_sid"], info["worker_sid"])

    # -- shared implementation ----------------------------------------------------------------------

    async def _admit(
        self, request: web.Request, operation: Operation, sid: str | None, request_id: str
    ) -> tuple[web.StreamResponse | None, Plan | None]:
        """Basic auth, then the faults' plan: an early response (401, an injected failure) or None,
        and the plan the rest of the request carries out."""
        if not self._auth.allows(request.headers.get("Authorization")):
            self._counters.record(operation, sid, 401)
            return _unauthorized(request_id), None
        plan = self._faults.plan(operation, sid)
        if plan is None:
            return None, None
        return await self._disturb(request, plan, operation, sid, request_id), plan

    def _find(self, request: web.Request) -> Reservation | None:
        """The reservation a fetch or update names, if it exists under that workspace and parent."""
        info = request.match_info
        return self._store.find(
            info["workspace_sid"],
            info["sid"],
            task_sid=info.get("task_sid"),
            worker_sid=info.get("worker_sid"),
        )

    async def _fetch(self, request: web.Request, scope: Scope) -> web.StreamResponse:
        request_id, sid = new_request_id(), request.match_info["sid"]
        early, plan = await self._admit(request, Operation.FETCH, sid, request_id)
        if early is not None:
            return early
        reservation = self._find(request)
        if reservation is None:
            return self._not_found(request, Operation.FETCH, sid, request_id)
        return self._reservation_response(request, scope, Operation.FETCH, reservation, request_id, plan)

    async def _update(self, request: web.Request, scope: Scope) -> web.StreamResponse:
        request_id, sid = new_request_id(), request.match_info["sid"]
        early, plan = await self._admit(request, Operation.UPDATE, sid, request_id)
        log = _UpdateNote(sid, request_id, str(scope), request.headers.get("If-Match"), plan)
        log.traceparent = request.headers.get("traceparent")
        if early is not None:
            dropped = plan is not None and plan.failure is FaultKind.DROP
            return self._noted(log, early, DROPPED_ANSWER if dropped else early.status)
        body = await request.read()
        # From here on, no await: the lookup, the If-Match check and the change are one step.
        if self._find(request) is None:
            return self._noted(log, self._not_found(request, Operation.UPDATE, sid, request_id), 404)
        if_match = log.if_match
        try:
            form = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
            params = parse_update_form(form, scope)
            log.params = params
            found, reservation = self._store.landed_update(
                sid,
                params,
                None if if_match is None else parse_if_match(if_match),
                request_id,
                concurrent_change=plan is not None and plan.concurrent_change,
                status_race=None if plan is None else plan.status_race,
            )
        except (InvalidParameter, TransitionRefused) as refused:
            self._counters.record(Operation.UPDATE, sid, 400)
            return self._noted(log, _error(400, 20001, refused.message, request_id), 400)
        except UnicodeDecodeError:
            self._counters.record(Operation.UPDATE, sid, 400)
            return self._noted(
                log, _error(400, 20001, "The request body is not valid UTF-8", request_id), 400
            )
        except IfMatchMismatch:
            self._counters.record(Operation.UPDATE, sid, 412)
            return self._noted(log, _error(412, 20412, "Precondition Failed", request_id), 412)
        except UnknownResource:
            return self._noted(log, self._not_found(request, Operation.UPDATE, sid, request_id), 404)
        log.landed, log.from_status = (reservation.version, str(reservation.status)), str(found)
        if plan is not None and plan.delay_after_apply:
            await asyncio.sleep(plan.delay_after_apply)
        response = self._reservation_response(request, scope, Operation.UPDATE, reservation, request_id, plan)
        dropped = plan is not None and plan.failure is FaultKind.DROP
        return self._noted(log, response, DROPPED_ANSWER if dropped else response.status)

    def _noted(
        self, note: _UpdateNote, response: web.StreamResponse, answer: int | str
    ) -> web.StreamResponse:
        """Log one update request's fate in the update log, and hand its response on."""
        landed = note.landed
        self._updates.record(
            reservation_sid=note.sid,
            request_id=note.request_id,
            scope=note.scope,
            params=note.params,
            if_match=note.if_match,
            faults=() if note.plan is None else note.plan.fired,
            answer=answer,
            landed_version=None if landed is None else landed[0],
            from_status=note.from_status if landed is not None else None,
            to_status=None if landed is None else landed[1],
            traceparent=note.traceparent,
        )
        return response

    async def _list(
        self, request: web.Request, scope: Scope, workspace_sid: str, parent_sid: str
    ) -> web.StreamResponse:
        request_id = new_request_id()
        early, plan = await self._admit(request, Operation.LIST, None, request_id)
        if early is not None:
            return early
        if scope is Scope.TASK:
            reservations = self._store.task_reservations(workspace_sid, parent_sid)
        else:
            reservations = self._store.worker_reservations(workspace_sid, parent_sid)
        if reservations is None:
            return self._not_found(request, Operation.LIST, None, request_id)
        query = request.query
        filters: dict[str, str] = {}
        status = query.get("ReservationStatus")
        if status is not None:
            if status not in RESERVATION_STATUSES:
                self._counters.record(Operation.LIST, None, 400)
                allowed = ", ".join(RESERVATION_STATUSES)
                message = (
                    f"Invalid value '{status}' for parameter 'ReservationStatus': must be one of {allowed}"
                )
                return _error(400, 20001, message, request_id)
            filters["ReservationStatus"] = status
            reservations = [r for r in reservations if r.status == status]
        worker_sid = query.get("WorkerSid") if scope is Scope.TASK else None
        if worker_sid is not None:
            filters["WorkerSid"] = worker_sid
            reservations = [r for r in reservations if r.worker_sid == worker_sid]
        raw_size = query.get("PageSize", str(DEFAULT_PAGE_SIZE))
        if not raw_size.isdigit() or not 1 <= int(raw_size) <= MAX_PAGE_SIZE:
            self._counters.record(Operation.LIST, None, 400)
            message = (
                f"Invalid value '{raw_size}' for parameter 'PageSize': must be between 1 and {MAX_PAGE_SIZE}"
            )
            return _error(400, 20001, message, request_id)
        base = _base_url(request)
        items = [representation(r, scope, base, self._account_sid) for r in reservations]
        body = encode(list_envelope(items, base + request.path, filters, int(raw_size)))
        headers = {REQUEST_ID_HEADER: request_id, "Content-Type": JSON_CONTENT_TYPE}
        etag_name = self._etag_names[(scope, Operation.LIST)]
        if etag_name is not None:
            headers[etag_name] = list_etag(reservations)
        self._counters.record(Operation.LIST, None, 200)
        if plan is not None and plan.failure is FaultKind.DROP:
            return self._drop(request, Operation.LIST, None)
        return web.Response(body=body, headers=headers)

    def _reservation_response(
        self,
        request: web.Request,
        scope: Scope,
        operation: Operation,
        reservation: Reservation,
        request_id: str,
        plan: Plan | None,
    ) -> web.StreamResponse:
        if plan is not None and plan.failure is FaultKind.DROP:
            # An "after_apply" drop: the work is done, the client never hears of it.
            return self._drop(request, operation, reservation.sid)
        body = encode(representation(reservation, scope, _base_url(request), self._account_sid))
        headers = {REQUEST_ID_HEADER: request_id, "Content-Type": JSON_CONTENT_TYPE}
        etag_name = self._etag_names[(scope, operation)]
        if etag_name is not None:
            headers[etag_name] = reservation.etag
        self._counters.record(operation, reservation.sid, 200)
        return web.Response(body=body, headers=headers)

    async def _disturb(
        self, request: web.Request, plan: Plan, operation: Operation, sid: str | None, request_id: str
    ) -> web.StreamResponse | None:
        """Carry out a fault plan's delay and early failure; None lets the request go on."""
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.failure is None or plan.after_apply:
            return None
        if plan.failure is FaultKind.DROP:
            return self._drop(request, operation, sid)
        status, code, message = _FAULT_STATUS[plan.failure]
        self._counters.record(operation, sid, status)
        response = _error(status, code, message, request_id)
        if plan.failure is FaultKind.THROTTLE:
            response.headers["Retry-After"] = str(plan.retry_after)
        return response

    def _drop(self, request: web.Request, operation: Operation, sid: str | None) -> web.StreamResponse:
        """Close the connection without a response (aiohttp discards what we return)."""
        self._counters.record(operation, sid, DROPPED)
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response(status=204)

    def _not_found(
        self, request: web.Request, operation: Operation, sid: str | None, request_id: str
    ) -> web.StreamResponse:
        self._counters.record(operation, sid, 404)
        return _error(404, 20404, f"The requested resource {request.path} was not found", request_id)


class _UpdateNote:
    """What the update log will say about one update request, filled in as it goes."""

    __slots__ = (
        "from_status",
        "if_match",
        "landed",
        "params",
        "plan",
        "request_id",
        "scope",
        "sid",
        "traceparent",
    )

    def __init__(
        self, sid: str, request_id: str, scope: str, if_match: str | None, plan: Plan | None
    ) -> None:
        self.sid, self.request_id, self.scope, self.if_match, self.plan = (
            sid,
            request_id,
            scope,
            if_match,
            plan,
        )
        self.params: dict[str, object] | None = None
        self.landed: tuple[int, str] | None = None
        self.from_status: str | None = None
        self.traceparent: str | None = None


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _error(status: int, code: int, message: str, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, code, message),
        headers={REQUEST_ID_HEADER: request_id, "Content-Type": JSON_CONTENT_TYPE},
    )


def _unauthorized(request_id: str) -> web.Response:
    response = _error(401, 20003, "Authenticate", request_id)
    response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    return response


def _guard(handler: Handler) -> Handler:
    """Turn a bug into Twilio's 500 body (code 20500) instead of aiohttp's plain-text page."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception:
            logger.exception("emulator: unexpected error on %s %s", request.method, request.path)
            return _error(500, 20500, "Internal Server Error", new_request_id())

    return guarded
