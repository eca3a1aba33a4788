"""The TaskRouter gateway: fetch and update reservations through the twilio SDK.

The one place that talks to TaskRouter and the one place that inspects twilio's exceptions and HTTP
statuses; everything above it sees :class:`FetchedReservation` and the project's own errors.

The twilio client is not documented as thread-safe and keeps a small connection pool, so build one
gateway per thread, greenlet or process (``TaskRouterGateway.from_settings`` does that cheaply).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import urllib3
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.rest import Client

from workers import metrics
from workers.config import Settings
from workers.core.action import Action
from workers.core.state_machine import Status
from workers.errors import (
    PermanentTaskRouterError,
    PreconditionFailed,
    TaskRouterError,
    Throttled,
    TransientTaskRouterError,
)
from workers.taskrouter.governor import Governor
from workers.taskrouter.http import Urllib3HttpClient, proxy_for

DEFAULT_TIMEOUT_SECONDS = 10.0
# What `doctor` reads to prove the credentials: a reservation that exists nowhere. TaskRouter checks
# the credentials first (401) and only then finds nothing (404), so a 404 proves them.
_NOWHERE = ("WS" + "0" * 32, "WR" + "0" * 32, "WT" + "0" * 32)


@dataclass(frozen=True, slots=True)
class ReservationRef:
    """Where a reservation lives: the task-scoped endpoint when a task SID is known."""

    workspace_sid: str
    reservation_sid: str
    task_sid: str | None = None
    worker_sid: str | None = None

    @classmethod
    def of(cls, action: Action) -> ReservationRef:
        return cls(action.workspace_sid, action.reservation_sid, action.task_sid, action.worker_sid)


@dataclass(frozen=True, slots=True)
class FetchedReservation:
    """A reservation as TaskRouter last showed it, with the ETag that guards the next update."""

    sid: str
    status: Status
    etag: str | None
    task_sid: str
    worker_sid: str
    request_id: str | None
    http_status: int


class TaskRouterGateway:
    """``governor``: the process's share of the account-wide budget, which the HTTP client takes
    a slot of for each request and which hears of every 429 (None: calls are not governed,
    ``TASKROUTER_MAX_CONCURRENCY=0``)."""

    def __init__(
        self, client: Client, http_client: Urllib3HttpClient, governor: Governor | None = None
    ) -> None:
        self._client = client
        self._http = http_client
        self._v1 = client.taskrouter.v1
        self._governor = governor

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        governor: Governor | None = None,
    ) -> TaskRouterGateway:
        credentials = settings.twilio_credentials()
        http_client = Urllib3HttpClient(timeout, proxy_for(settings.taskrouter_base_url), governor)
        client = Client(
            credentials.username,
            credentials.password,
            account_sid=credentials.account_sid,
            http_client=http_client,
        )
        client.taskrouter.base_url = settings.taskrouter_base_url
        return cls(client, http_client, governor)

    def fetch(self, ref: ReservationRef) -> FetchedReservation:
        """Fetch the reservation and its ETag.

        Twilio's spec declares no ETag on the worker-scoped fetch; the body carries the task SID, so
        the ETag then comes from the task-scoped fetch of the same reservation.
        """
        response = self._call("fetch", lambda: self._context(ref).fetch_with_http_info())
        state = self._state(response)
        if state.etag is None and ref.task_sid is None:
            task_ref = ReservationRef(ref.workspace_sid, ref.reservation_sid, task_sid=state.task_sid)
            return self.fetch(task_ref)
        return state

    def update(
        self, ref: ReservationRef, arguments: Mapping[str, Any], if_match: str | None
    ) -> FetchedReservation:
        """Send the update; ``if_match`` None sends it unconditionally (only replays do that)."""
        kwargs = dict(arguments)
        if if_match is not None:
            kwargs["if_match"] = if_match
        response = self._call("update", lambda: self._context(ref).update_with_http_info(**kwargs))
        return self._state(response)

    def events(
        self,
        workspace_sid: str,
        start: datetime,
        end: datetime,
        reservation_sid: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[list[dict[str, Any]]]:
        """TaskRouter's Events resource (``GET /v1/Workspaces/{ws}/Events``), page by page: the
        events between ``start`` and ``end`` (of one reservation, if given), each as the keyword
        arguments of :func:`workers.core.taskrouter_events.from_resource`. TaskRouter keeps 30 days."""
        resource = self._v1.workspaces(workspace_sid).events
        # The dates go out in whole seconds (the SDK cuts the fraction): round the end up, so that
        # the events of its last second are in.
        if end.microsecond:
            end = end.replace(microsecond=0) + timedelta(seconds=1)
        filters: dict[str, Any] = {"start_date": start, "end_date": end, "page_size": page_size}
        if reservation_sid is not None:
            filters["reservation_sid"] = reservation_sid
        page = self._call("events", lambda: resource.page(**filters))
        while page is not None:
            yield [_event(instance) for instance in page]
            page = self._call("events", page.next_page)

    def authenticate(self) -> None:
        """One authenticated read (a reservation that exists nowhere); a :class:`TaskRouterError`
        unless TaskRouter accepted the credentials. Not counted in the metrics: no action made it."""
        workspace, reservation, task_sid = _NOWHERE
        context = self._context(ReservationRef(workspace, reservation, task_sid))
        try:
            context.fetch_with_http_info()
        except (TwilioRestException, TwilioServiceException) as exc:
            error = self._translate(exc)
            if error.status == 404:
                return
            raise error from exc
        except urllib3.exceptions.HTTPError as exc:
            raise TransientTaskRouterError(f"connection failed: {exc}") from exc

    def _context(self, ref: ReservationRef) -> Any:
        workspace = self._v1.workspaces(ref.workspace_sid)
        if ref.task_sid is not None:
            return workspace.tasks(ref.task_sid).reservations(ref.reservation_sid)
        if ref.worker_sid is None:
            raise ValueError("a reservation reference needs a task SID or a worker SID")
        return workspace.workers(ref.worker_sid).reservations(ref.reservation_sid)

    def _state(self, response: Any) -> FetchedReservation:
        instance = response.data
        headers: Mapping[str, str] = response.headers
        return FetchedReservation(
            sid=instance.sid,
            status=Status(instance.reservation_status),
            etag=header(headers, "ETag"),
            task_sid=instance.task_sid,
            worker_sid=instance.worker_sid,
            request_id=header(headers, "Twilio-Request-Id"),
            http_status=response.status_code,
        )

    def _call(self, endpoint: str, request: Any) -> Any:
        """Make one call (``endpoint``: fetch or update), timed by status in the metrics; a 429 is
        reported to the governor."""
        started = time.perf_counter()
        try:
            response = request()
        except (TwilioRestException, TwilioServiceException) as exc:
            error = self._translate(exc)
            metrics.taskrouter_call(endpoint, str(error.status), started)
            if isinstance(error, Throttled):
                metrics.THROTTLED.inc()
                if self._governor is not None:
                    self._governor.throttled(error.retry_after)
            raise error from exc
        except urllib3.exceptions.HTTPError as exc:  # timed out, refused, reset, dropped, TLS, proxy
            # urllib3 makes a refused connection a ConnectTimeoutError; it did not time out.
            timed_out = isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
                exc, urllib3.exceptions.NewConnectionError
            )
            metrics.taskrouter_call(endpoint, "timeout" if timed_out else "connection_error", started)
            what = "did not answer in time" if timed_out else "connection failed"
            raise TransientTaskRouterError(f"TaskRouter {what}: {exc}") from exc
        # A page of a list (the Events resource) carries neither status nor headers: it came back,
        # so it was a 200, and its headers are the HTTP client's last response's.
        status = getattr(response, "status_code", 200)
        metrics.taskrouter_call(endpoint, str(status), started)
        last = self._http.last_response
        read_limits(getattr(response, "headers", None) or (last.headers if last is not None else {}))
        return response

    def _translate(self, exc: TwilioRestException | TwilioServiceException) -> TaskRouterError:
        status = int(exc.status)
        code = int(exc.code) if exc.code is not None else None
        headers: Mapping[str, str] = self._http.last_response.headers if self._http.last_response else {}
        read_limits(headers)
        request_id = header(headers, "Twilio-Request-Id")
        message = _message(exc)
        if status == 412:
            return PreconditionFailed(message, status, code, request_id)
        if status == 429:
            return Throttled(
                message, status, code, request_id, retry_after=_seconds(header(headers, "Retry-After"))
            )
        if status >= 500:
            retry_after = _seconds(header(headers, "Retry-After"))
            return TransientTaskRouterError(message, status, code, request_id, retry_after)
        return PermanentTaskRouterError(message, status, code, request_id)


def _event(instance: Any) -> dict[str, Any]:
    data = instance.event_data if isinstance(instance.event_data, Mapping) else None
    return {
        "sid": instance.sid,
        "event_type": instance.event_type,
        "resource_type": instance.resource_type,
        "resource_sid": instance.resource_sid,
        "workspace_sid": instance.workspace_sid,
        "event_date_ms": instance.event_date_ms,
        "event_data": data,
    }


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever its casing: the SDK hands back a plain, case-sensitive dict."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


# What TaskRouter says of the account's limits, by lower-cased header name.
_LIMIT_HEADERS = ("twilio-concurrent-requests", "x-rate-limit-limit", "x-rate-limit-remaining")


def read_limits(headers: Mapping[str, str]) -> None:
    """Expose ``Twilio-Concurrent-Requests`` and ``X-Rate-Limit-Limit``/``-Remaining`` as metrics,
    when an answer carries them (one pass over the headers, nothing when none is there)."""
    found: dict[str, float] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in _LIMIT_HEADERS:
            number = _number(value)
            if number is not None:
                found[name] = number
    if found:
        metrics.taskrouter_limits(
            found.get("twilio-concurrent-requests"),
            found.get("x-rate-limit-limit"),
            found.get("x-rate-limit-remaining"),
        )


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare from Twilio, and our backoff still applies


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    if isinstance(exc, TwilioServiceException):
        return f"HTTP {exc.status} {exc.title}: {exc.detail or ''}".strip()
    return f"HTTP {exc.status}: {exc.msg}"
