"""The events API (FastAPI), run with ``reservations events-api``: TaskRouter tells us of every
reservation change, and each becomes a ledger transition with ``source = event``.

* ``POST /taskrouter/events``: a Workspace's Event Callback (form-encoded). ``X-Twilio-Signature``
  must hold for ``EVENTS_PUBLIC_URL`` + the path (``workers.taskrouter.signatures``), else 403 and
  nothing is recorded.
* ``POST /taskrouter/event-streams``: an Event Streams webhook sink (a JSON array of CloudEvents),
  checked by the ``bodySHA256`` signature and/or basic auth (``EVENTS_STREAMS_AUTH``).
* Both answer ``204`` with ``Content-Type: application/json`` only once every reservation event of
  the request is committed (group commit, ``workers.events.recording``); ``503`` when the ledger
  cannot take it (Twilio may retry; ``reservations reconcile`` recovers what was never accepted).
  Events that are not about a reservation, or report no status (``reservation.failed``), are
  acknowledged, not recorded, and counted (``reservations_events_total{result="ignored"}``).
* ``/healthz``, ``/readyz`` (the ledger answers) and ``/metrics`` (Prometheus) need no credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from workers import __version__, metrics
from workers.core.taskrouter_events import (
    Channel,
    Parsed,
    ReservationEvent,
    from_callback,
    from_cloud_event,
)
from workers.errors import ConfigurationError, InvalidEvent, LedgerError
from workers.events.recording import GroupCommitter, transition_of
from workers.ledger.connector import Connector
from workers.ledger.models import Role
from workers.ledger.queries import QUERIES
from workers.ledger.writer import PostgresLedgerWriter
from workers.taskrouter.signatures import SignatureCheck

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
CALLBACK_PATH = "/taskrouter/events"
STREAMS_PATH = "/taskrouter/event-streams"
# A delivery larger than this is refused (413): Event Streams batches are far smaller.
MAX_BODY = 1_000_000


@dataclass(frozen=True, slots=True)
class EventsApiConfig:
    database_url: str = field(repr=False)
    public_url: str
    auth_token: str | None = field(default=None, repr=False)
    streams_auth: tuple[str, ...] = ("signature",)
    basic_auth: str | None = field(default=None, repr=False)
    batch_max: int = 200
    writers: int = 4
    pool_timeout: float = 5.0
    # PROMETHEUS_MULTIPROC_DIR: /metrics adds up the files of every process (``--workers``).
    metrics_dir: str | None = None

    def checked_token(self) -> str:
        """The auth token signatures are checked with; ConfigurationError unless the API can check
        what it receives."""
        if not self.public_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                "EVENTS_PUBLIC_URL must be the public http(s) URL TaskRouter posts to (signatures cover it),"
                f" not {self.public_url!r}"
            )
        if self.auth_token is None:
            raise ConfigurationError(
                "no auth token to check X-Twilio-Signature with: set EVENTS_AUTH_TOKEN (or TWILIO_AUTH_TOKEN)"
            )
        if "basic" in self.streams_auth and self.basic_auth is None:
            raise ConfigurationError(
                "EVENTS_STREAMS_AUTH asks for basic auth: set EVENTS_BASIC_AUTH=user:password"
            )
        return self.auth_token


def _no_content() -> Response:
    """Twilio's expected answer: 204, ``Content-Type: application/json``. A new one each time: a
    Response is mutable (FastAPI sets ``background`` on the one an endpoint returns, middleware may
    add headers), so one shared instance could carry one request's state into the next."""
    return Response(status_code=204, headers={"Content-Type": "application/json"})


# The headers the callback handler reads, as ASGI spells them.
_CALLBACK_HEADERS = frozenset(
    {b"content-length", b"x-twilio-signature", b"x-twilio-webhooks-signature-settings"}
)


def _problem(status: int, error: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status, headers=headers or None)


class EventsApp:
    """The events API as uvicorn runs it. Event Callbacks, the hot path (Twilio sends one request
    per event), go straight to a plain ASGI handler: FastAPI's middleware, routing and dependency
    machinery cost as much CPU as the handler itself (py-spy, ops/bench_events.py). Everything
    else, the lifespan included, is the FastAPI app ``api``."""

    def __init__(self, api: FastAPI, callbacks: ASGIApp) -> None:
        self.api = api
        self._callbacks = callbacks

    @property
    def state(self) -> State:
        return self.api.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CALLBACK_PATH and scope["method"] == "POST":
            await self._callbacks(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def create_app(config: EventsApiConfig, *, committer: GroupCommitter | None = None) -> EventsApp:
    """The API over ``config.database_url`` as the writer role (or over ``committer``, in tests)."""
    check = SignatureCheck(config.checked_token(), config.public_url)
    basic = config.basic_auth.encode("utf-8") if config.basic_auth else None
    exposed = metrics.registry(config.metrics_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if committer is not None:
            app.state.committer, app.state.connector = committer, None
            yield
            return
        connector = Connector(
            config.database_url,
            Role.WRITER,
            min_size=1,
            max_size=config.writers + 1,
            timeout=config.pool_timeout,
            name="events-api",
        )
        connector.open(wait=False)
        # Transitions carry no parameters, so the writer needs no PII key.
        ours = GroupCommitter(
            PostgresLedgerWriter(connector, b""), batch_max=config.batch_max, threads=config.writers
        )
        ours.start()
        app.state.committer, app.state.connector = ours, connector
        try:
            yield
        finally:
            await asyncio.to_thread(ours.stop)
            connector.close()

    app = FastAPI(
        title="TaskRouter events receiver", version=__version__, description=__doc__, lifespan=lifespan
    )

    async def record(channel: Channel, parsed: Sequence[Parsed]) -> Response:
        """Make every reservation event of one delivery durable, then acknowledge it."""
        events = [event for event in parsed if isinstance(event, ReservationEvent)]
        ignored = len(parsed) - len(events)
        if ignored:
            metrics.event(channel, "ignored", ignored)
        group: GroupCommitter = app.state.committer
        futures = [asyncio.wrap_future(group.submit(transition_of(event))) for event in events]
        try:
            results = await asyncio.gather(*futures)
        except LedgerError as exc:
            metrics.event(channel, "unavailable", len(events))
            logger.warning(
                "%d event(s) not recorded (%s): %s", len(events), exc, ", ".join(e.key for e in events)
            )
            return _problem(503, "unavailable", "the ledger cannot record the event now; send it again later")
        now = time.time()
        for event, result in zip(events, results, strict=True):
            metrics.event(channel, "recorded" if result.appended else "duplicate")
            if result.appended and event.occurred_at is not None:
                metrics.event_delay(now - event.occurred_at.timestamp())
        return _no_content()

    def refused(channel: Channel, why: str, **headers: str) -> JSONResponse:
        metrics.event(channel, "refused")
        logger.warning("refused an event delivery on %s: %s", channel, why)
        return _problem(403, "forbidden", why, **headers)

    def invalid(channel: Channel, exc: Exception) -> JSONResponse:
        metrics.event(channel, "invalid")
        logger.warning("an event delivery on %s could not be read: %s", channel, exc)
        return _problem(400, "invalid_event", str(exc))

    async def callback(scope: Scope, receive: Receive, send: Send) -> None:
        """A Workspace's Event Callback (``application/x-www-form-urlencoded``, signed with the
        account's auth token; read with the standard library's ``parse_qsl``)."""
        headers = {name: value for name, value in scope["headers"] if name in _CALLBACK_HEADERS}
        try:
            raw = await _bounded_body(headers.get(b"content-length", b"").decode("latin-1"), _chunks(receive))
        except ClientDisconnect:
            return  # nobody to answer; nothing recorded
        answer = await _callback(raw, scope, headers)
        await answer(scope, receive, send)

    async def _callback(raw: bytes | None, scope: Scope, headers: dict[bytes, bytes]) -> Response:
        if raw is None:
            return _problem(413, "too_large", f"a delivery is at most {MAX_BODY} bytes")
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return invalid(Channel.CALLBACK, InvalidEvent("the body is not UTF-8"))
        params: dict[str, list[str]] = {}
        for name, value in pairs:
            params.setdefault(name, []).append(value)
        signature = headers.get(b"x-twilio-signature")
        settings = headers.get(b"x-twilio-webhooks-signature-settings")
        if not check.form(
            scope["path"],
            scope["query_string"].decode("latin-1"),
            params,
            signature.decode("latin-1") if signature is not None else None,
            settings.decode("latin-1") if settings is not None else None,
        ):
            return refused(Channel.CALLBACK, "X-Twilio-Signature is missing or does not match")
        try:
            parsed = from_callback({name: values[-1] for name, values in params.items() if values})
        except InvalidEvent as exc:
            return invalid(Channel.CALLBACK, exc)
        return await record(Channel.CALLBACK, [parsed])

    @app.post(CALLBACK_PATH, status_code=204, tags=["events"])
    async def event_callback(request: Request) -> Response:
        """A Workspace's Event Callback: form-encoded, signed with ``X-Twilio-Signature``. Served by
        the plain ASGI handler ahead of this app (:class:`EventsApp`); this route documents it in
        the OpenAPI schema, makes other methods get 405, and serves it the same way should the
        FastAPI app run alone."""
        raw = await _bounded_body(request.headers.get("content-length", ""), request.stream())
        headers = {name: value for name, value in request.scope["headers"] if name in _CALLBACK_HEADERS}
        return await _callback(raw, request.scope, headers)

    @app.post(STREAMS_PATH, status_code=204, tags=["events"])
    async def event_streams(request: Request) -> Response:
        """An Event Streams webhook sink's delivery: a JSON array of CloudEvents."""
        raw = await _bounded_body(request.headers.get("content-length", ""), request.stream())
        if raw is None:
            return _problem(413, "too_large", f"a delivery is at most {MAX_BODY} bytes")
        if "basic" in config.streams_auth and not _basic_ok(request.headers.get("Authorization"), basic):
            return refused(
                Channel.STREAM, "basic credentials are missing or wrong", **{"WWW-Authenticate": "Basic"}
            )
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return invalid(Channel.STREAM, InvalidEvent("the body is not UTF-8"))
        if "signature" in config.streams_auth and not check.json(
            request.url.path,
            request.url.query,
            body,
            request.headers.get(SIGNATURE_HEADER),
            request.headers.get(SIGNATURE_SETTINGS_HEADER),
        ):
            return refused(
                Channel.STREAM, "X-Twilio-Signature (with bodySHA256) is missing or does not match"
            )
        try:
            document = json.loads(body)
            items = document if isinstance(document, list) else [document]
            parsed = [from_cloud_event(item) for item in items]
        except (ValueError, InvalidEvent) as exc:
            return invalid(Channel.STREAM, exc)
        return await record(Channel.STREAM, parsed)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> JSONResponse:
        connector: Connector | None = request.app.state.connector
        try:
            if connector is not None:
                with connector.connection() as conn:
                    conn.execute(QUERIES["ping"])
        except LedgerError as exc:
            logger.warning("not ready: %s", exc)
            return _problem(503, "unavailable", "the ledger does not answer (database down, or not migrated)")
        return JSONResponse({"status": "ready", "time": datetime.now(UTC).isoformat()})

    @app.get("/metrics", tags=["health"])
    def prometheus() -> Response:
        return Response(generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)

    return EventsApp(app, callback)


def _basic_ok(header: str | None, expected: bytes | None) -> bool:
    """``Authorization: Basic base64(user:password)`` equals ``expected`` (constant time)."""
    if expected is None or header is None or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected)


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """A request's body as it arrives (what Starlette's ``Request.stream`` does, without a Request)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _bounded_body(declared: str, stream: AsyncIterator[bytes]) -> bytes | None:
    """The body, or None once it passes MAX_BODY: read as it streams in, so that a hostile sender
    never makes us hold more than that (a ``declared`` Content-Length over it is refused unread)."""
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
