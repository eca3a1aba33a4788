"""The read-only audit HTTP API (FastAPI), run with ``reservations audit-api``.

* Every ``/v1`` resource needs ``Authorization: Bearer <token>``: AUDIT_API_TOKEN or a named
  auditor's (AUDIT_API_TOKENS), compared in constant time, or the console's session cookie;
  ``/healthz`` and ``/readyz`` do not. A token in a URL is refused.
* The console for people is at ``/ui/``; Swagger UI at ``/docs`` loads its assets from here.
* The database connections run as ``reservations_reader``: SELECT only.
* Every filter is validated (SID patterns, UUIDs, RFC 3339 times, 1 <= limit <= 1000, cursors)
  and refused with 422 and a message that names the parameter; a bad value never reaches SQL.
* Pages are in ledger order ``(tx_id, position)`` and resume after an opaque cursor
  (``next_cursor``); rows that commit late sort after every cursor already handed out, so a
  client that follows ``next_cursor`` never misses nor repeats a row (ops/LEDGER.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, create_model

from workers import __version__, api_metrics
from workers.audit import auth, console, guard, queries
from workers.audit.params import parse_rfc3339
from workers.audit.rows import EVENT_FIELDS, action_row, event_row, reservation_row
from workers.audit.timeline import Step, timeline
from workers.audit.watch import OverviewWatch, VerifyWatch
from workers.errors import ConfigurationError, LedgerError, LedgerUnavailable
from workers.health import FAIL, OK, Check, add_health_routes
from workers.ledger.connector import Connector
from workers.ledger.models import ActionRecord, Cursor, EventKind, LedgerRow, Outcome, ReservationState, Role
from workers.ledger.reader import LedgerReader

logger = logging.getLogger(__name__)

_SID = {prefix: f"^{prefix}[0-9a-fA-F]{{32}}$" for prefix in ("WS", "WR", "WT", "WK")}
_CURSOR = re.compile(r"^(\d{1,20}):(\d{1,19})$")
_MAX_XID8 = 2**64 - 1
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1
# Printable text without control characters (PostgreSQL refuses NUL in text).
_TEXT = r"^[^\x00-\x1f\x7f]+$"


@dataclass(frozen=True, slots=True)
class AuditApiConfig:
    database_url: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    insecure_local: bool = False
    # Named auditors (AUDIT_API_TOKENS): each request is logged with its auditor's name.
    auditors: tuple[auth.Auditor, ...] = ()
    # Mark the console's cookie Secure even over plain HTTP (TLS ends at a proxy in front).
    secure_cookie: bool = False
    # Seconds between background runs of ledger verify for the console's overview (0: none).
    verify_interval: float = 0
    pool_max: int = 10
    # How long a request waits for a database connection before answering 503.
    pool_timeout: float = 5.0


class Problem(BaseModel):
    """An error: ``message`` says what was wrong, naming the parameter."""

    error: str
    message: str
    detail: list[dict[str, Any]] | None = None


def _model_of(name: str, source: type, names: Iterable[str] | None = None, **types: Any) -> type[BaseModel]:
    """A response model with the fields of the dataclass ``source`` (or those of ``names``, in
    that order), typed as ``source`` types them unless ``types`` says otherwise."""
    types = typing.get_type_hints(source) | types
    chosen = [field.name for field in dataclasses.fields(source)] if names is None else names
    fields: dict[str, Any] = {field: (types[field], ...) for field in chosen}
    return create_model(name, **fields)


# The API's objects are the ledger's rows under the audit names (``workers.audit.rows``).
if typing.TYPE_CHECKING:  # built at run time; to mypy, models
    Event = BaseModel
    ActionEntry = BaseModel
    ReservationEntry = BaseModel
    TimelineStep = BaseModel
else:
    Event = _model_of("Event", LedgerRow, EVENT_FIELDS, cursor=str, row_hash=str)
    ActionEntry = _model_of("ActionEntry", ActionRecord)
    ReservationEntry = _model_of("ReservationEntry", ReservationState)
    TimelineStep = _model_of("TimelineStep", Step)


class EventPage(BaseModel):
    """``next_cursor``: pass it as ``after`` to continue (also to poll for rows that arrive later).
    ``has_more``: the page was full, so more rows may be waiting right now."""

    items: list[Event]
    next_cursor: str | None
    has_more: bool
    limit: int
    archived_months: list[str] = Field(
        default_factory=list,
        description="Archived months (YYYY-MM) the query reaches into: their rows are no longer in"
        " the ledger and are not in this page (`reservations ledger archive`).",
    )
    notice: str | None = Field(default=None, description="Says so in words, when it does.")


class ActionStory(BaseModel):
    action: ActionEntry
    events: list[Event]
    redriven_as: list[uuid.UUID]
    redrive_of: uuid.UUID | None


class Timeline(BaseModel):
    reservation_sid: str
    steps: list[TimelineStep]


class InvalidFilter(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(parameter, message)
        self.parameter = parameter
        self.message = message


def parse_time(parameter: str, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset (``2026-01-31T12:00:00Z``), or InvalidFilter."""
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidFilter(parameter, str(exc)) from None


def parse_cursor(value: str | None) -> Cursor | None:
    if value is None:
        return None
    found = _CURSOR.match(value)
    if found is None:
        raise InvalidFilter("after", "must be a cursor returned as next_cursor by this API")
    cursor = Cursor(int(found.group(1)), int(found.group(2)))
    if cursor.tx_id > _MAX_XID8 or cursor.position > _MAX_BIGINT:
        raise InvalidFilter("after", "is out of range")
    return cursor


@dataclass(frozen=True, slots=True)
class CommonQuery:
    filters: queries.Filters
    after: Cursor | None
    limit: int


def common_query(
    action_id: Annotated[uuid.UUID | None, Query(description="An action_id (UUID).")] = None,
    correlation_id: Annotated[
        str | None, Query(min_length=1, max_length=200, pattern=_TEXT, description="A correlation id.")
    ] = None,
    kind: Annotated[EventKind | None, Query(description="A ledger event kind.")] = None,
    outcome: Annotated[
        Outcome | None,
        Query(
            description="An outcome: the rows that settle an action with it (an outcome row, a rejected"
            " input, or the transition that settled it: an applied action has no outcome row since"
            " migration 0013)."
        ),
    ] = None,
    twilio_error_code: Annotated[
        int | None, Query(ge=0, le=_MAX_INT, description="A Twilio error code, e.g. 20001.")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=40, description="RFC 3339, inclusive (the database clock).")
    ] = None,
    until: Annotated[str | None, Query(max_length=40, description="RFC 3339, exclusive.")] = None,
    after: Annotated[
        str | None, Query(max_length=45, description="Resume after this cursor (a next_cursor).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE, description="Rows per page.")] = 100,
) -> CommonQuery:
    start, end = parse_time("since", since), parse_time("until", until)
    if start is not None and end is not None and end < start:
        raise InvalidFilter("until", "is before since")
    return CommonQuery(
        queries.Filters(
            action_id=action_id,
            correlation_id=correlation_id,
            kind=kind.value if kind else None,
            outcome=outcome.value if outcome else None,
            twilio_error_code=twilio_error_code,
            since=start,
            until=end,
        ),
        parse_cursor(after),
        limit,
    )


Common = Annotated[CommonQuery, Depends(common_query)]


def get_ledger(request: Request) -> LedgerReader:
    reader = getattr(request.app.state, "ledger", None)
    if not isinstance(reader, LedgerReader):  # pragma: no cover - only before the lifespan started
        raise LedgerUnavailable("the API is not started")
    return reader


LedgerDep = Annotated[LedgerReader, Depends(get_ledger)]
Endpoint = Callable[..., dict[str, Any]]
ReservationSid = Annotated[str, Path(pattern=_SID["WR"])]
_bearer = HTTPBearer(auto_error=False, description="AUDIT_API_TOKEN, or a named auditor's token")


def authenticated(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The bearer token must be an auditor's (constant-time comparisons), or the console's cookie."""
    auditor = console.auditor_of(request)
    if auditor is not None:
        guard.note_auditor(request, auditor.name)
    else:
        raise HTTPException(
            401,
            detail="a valid bearer token is required (Authorization: Bearer <AUDIT_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The URL carries a credential (error credentials_in_url)."},
    401: {"model": Problem, "description": "No bearer token, or a wrong one."},
    422: {"model": Problem, "description": "A parameter is invalid; the message names it."},
    503: {"model": Problem, "description": "The ledger's database does not answer."},
}


def create_app(config: AuditApiConfig, *, ledger: LedgerReader | None = None) -> FastAPI:
    """The API over ``config.database_url`` as the reader role (or over ``ledger``, in tests).

    Refuses (ConfigurationError) to build without a token unless ``insecure_local`` is set.
    """
    known = auth.auditors(token=config.token, named=config.auditors)
    if not known and not config.insecure_local:
        raise ConfigurationError(
            "AUDIT_API_TOKEN is not set (nor AUDIT_API_TOKENS): refusing to serve the ledger without"
            " authentication (use --insecure-local only on a developer machine)"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if ledger is not None:
            _app.state.ledger = ledger
        if isinstance(getattr(_app.state, "ledger", None), LedgerReader):
            with _watching(_app, _app.state.ledger, config.verify_interval):
                yield  # a ledger handed in (tests): its owner closes it
            return
        connector = Connector(
            config.database_url,
            Role.READER,
            min_size=1,
            max_size=config.pool_max,
            timeout=config.pool_timeout,
            name="audit-api",
        )
        connector.open(wait=False)
        # PII search is not offered over HTTP, so the reader needs no PII key.
        _app.state.ledger = LedgerReader(connector, b"")
        try:
            with _watching(_app, _app.state.ledger, config.verify_interval):
                yield
        finally:
            del _app.state.ledger
            connector.close()

    app = FastAPI(
        title="Reservation ledger audit API",
        version=__version__,
        description=__doc__,
        lifespan=lifespan,
        responses=_ERRORS,
        # Swagger UI from local assets (workers.audit.console); no CDN, so it works offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.auditors = known
    guard.install(app)
    console.install(app, get_ledger, config.secure_cookie)
    api_metrics.instrument(app, "audit")

    def v1_get(
        path: str, model: type[BaseModel], tag: str, missing: str | None = None, **more: Any
    ) -> Callable[[Endpoint], Endpoint]:
        """The route of a ``/v1`` resource (a bearer token needed); ``missing`` documents its 404."""
        if missing is not None:
            more["responses"] = {404: {"model": Problem, "description": missing}}
        return app.get(path, response_model=model, dependencies=[Depends(authenticated)], tags=[tag], **more)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        message = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ())[1:]) or 'request'}: {error.get('msg')}"
            for error in errors
        )
        return _problem(422, "invalid_request", message, errors)

    @app.exception_handler(InvalidFilter)
    async def invalid_filter(_request: Request, exc: InvalidFilter) -> JSONResponse:
        return _problem(422, "invalid_request", f"{exc.parameter}: {exc.message}")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        error = {401: "unauthorized", 404: "not_found"}.get(exc.status_code, "error")
        response = _problem(exc.status_code, error, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(LedgerUnavailable)
    async def unavailable(_request: Request, exc: LedgerUnavailable) -> JSONResponse:
        logger.warning("ledger unavailable: %s", exc)
        return _problem(503, "unavailable", "the ledger's database does not answer; try again later")

    @app.exception_handler(LedgerError)
    async def ledger_error(_request: Request, exc: LedgerError) -> JSONResponse:
        logger.error("the ledger could not answer: %s", exc)
        return _problem(500, "ledger_error", "the ledger could not answer this query; see the server's log")

    def ledger_answers() -> list[Check]:
        try:
            reader = app.state.ledger
            reader.ping()
        except (LedgerError, AttributeError) as exc:
            return [
                Check("ledger", FAIL, f"the ledger does not answer (database down, or not migrated): {exc}")
            ]
        return [Check("ledger", OK, "answers")]

    add_health_routes(app, ledger_answers)

    @v1_get("/v1/events", EventPage, "history")
    def events(
        reader: LedgerDep,
        common: Common,
        reservation_sid: Annotated[str | None, Query(pattern=_SID["WR"])] = None,
        task_sid: Annotated[str | None, Query(pattern=_SID["WT"])] = None,
        worker_sid: Annotated[str | None, Query(pattern=_SID["WK"])] = None,
        workspace_sid: Annotated[str | None, Query(pattern=_SID["WS"])] = None,
    ) -> dict[str, Any]:
        """Ledger rows matching every filter given, in ledger order."""
        return history_page(
            reader,
            common,
            reservation_sid=reservation_sid,
            task_sid=task_sid,
            worker_sid=worker_sid,
            workspace_sid=workspace_sid,
        )

    for collection, parameter, prefix, description in _RESOURCE_HISTORIES:
        v1_get(
            f"/v1/{collection}/{{{parameter}}}/history",
            EventPage,
            "history",
            name=f"{parameter.removesuffix('_sid')}_history",
            description=description,
        )(_resource_history(parameter, prefix))

    @v1_get(
        "/v1/reservations/{reservation_sid}",
        ReservationEntry,
        "reservations",
        missing="The ledger never saw a transition of it.",
    )
    def reservation(reader: LedgerDep, reservation_sid: ReservationSid) -> dict[str, Any]:
        """The reservation's last recorded status and ETag (the projection)."""
        found = reader.reservation(reservation_sid)
        if found is None:
            raise HTTPException(404, f"the ledger has no transition of reservation {reservation_sid}")
        return reservation_row(found)

    @v1_get("/v1/reservations/{reservation_sid}/timeline", Timeline, "reservations")
    def reservation_timeline(reader: LedgerDep, reservation_sid: ReservationSid) -> dict[str, Any]:
        """The reservation's status over time, reconstructed from the ledger alone."""
        steps = timeline(reader, reservation_sid)
        return {"reservation_sid": reservation_sid, "steps": [_step(s) for s in steps]}

    @v1_get(
        "/v1/actions/{action_id}", ActionStory, "actions", missing="The ledger never received this action."
    )
    def action(reader: LedgerDep, action_id: uuid.UUID) -> dict[str, Any]:
        """One action's whole story: its registry entry, every row, and its redrive links."""
        found = queries.story(reader, action_id)
        if found is None:
            raise HTTPException(404, f"the ledger never received action {action_id}")
        return {
            "action": action_row(found.record),
            "events": [event_row(e) for e in found.events],
            "redriven_as": [str(a) for a in found.redriven_as],
            "redrive_of": str(found.redrive_of) if found.redrive_of else None,
        }

    return app


@contextmanager
def _watching(app: FastAPI, reader: LedgerReader, interval: float) -> Iterator[None]:
    """The console overview's background work (verify, the day's counts) while the API serves."""
    watches = [VerifyWatch(reader, interval), OverviewWatch(reader)]
    app.state.verify_watch, app.state.overview_watch = watches
    for watch in watches:
        watch.start()
    try:
        yield
    finally:
        for watch in watches:
            watch.stop()


def history_page(reader: LedgerReader, common: CommonQuery, **resource: Any) -> dict[str, Any]:
    filters = queries.Filters(**{**_fields(common.filters), **resource})
    found = queries.page(reader, filters, after=common.after, limit=common.limit)
    return {
        "items": [event_row(e) for e in found.events],
        "next_cursor": str(found.next_cursor) if found.next_cursor is not None else None,
        "has_more": found.has_more,
        "limit": common.limit,
        "archived_months": [f"{m:%Y-%m}" for m in found.archived],
        "notice": queries.archived_notice(found.archived),
    }


# The resources with a history of their own: (collection, path parameter, SID prefix, description).
_RESOURCE_HISTORIES = (
    (
        "reservations",
        "reservation_sid",
        "WR",
        "One reservation's rows, in ledger order (which is its chain's order).",
    ),
    ("tasks", "task_sid", "WT", "The rows of one task's reservations."),
    ("workers", "worker_sid", "WK", "The rows of one worker's reservations."),
    ("workspaces", "workspace_sid", "WS", "The rows of one workspace."),
)


def _resource_history(parameter: str, prefix: str) -> Callable[..., dict[str, Any]]:
    """The endpoint of one resource's history: its rows, the SID in the path as ``parameter``."""

    def history(reader: LedgerReader, common: CommonQuery, **resource: str) -> dict[str, Any]:
        return history_page(reader, common, **resource)

    keyword = inspect.Parameter.KEYWORD_ONLY
    signature = inspect.Signature(
        [
            inspect.Parameter("reader", keyword, annotation=LedgerDep),
            inspect.Parameter("common", keyword, annotation=Common),
            inspect.Parameter(parameter, keyword, annotation=Annotated[str, Path(pattern=_SID[prefix])]),
        ]
    )
    history.__signature__ = signature  # type: ignore[attr-defined]  # FastAPI reads the parameter names here
    return history


def _fields(filters: queries.Filters) -> dict[str, Any]:
    return {name: getattr(filters, name) for name in filters.__dataclass_fields__}


def _step(step: Step) -> dict[str, Any]:
    return {field.name: getattr(step, field.name) for field in dataclasses.fields(step)}


def _problem(
    status: int, error: str, message: str, detail: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)
