"""The audit console: read-only pages for people at ``/ui/``, served by the audit API.

Server-rendered (Jinja2) with self-hosted CSS and no script of its own; the pictures are SVG drawn
on the server (``workers.audit.charts``). Every page reads what the API reads, through the same
queries and cursor paging, and offers what it shows as CSV and JSON (``?export=csv|json``).

Sign-in: a login form takes an auditor's token once and sets an ``HttpOnly``, ``SameSite=Strict``
cookie (``workers.audit.auth``); without a valid one every page answers with the login form
(401), never with data.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import fastapi_offline
import jinja2
from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from workers.audit import auth, guard, queries
from workers.audit.charts import coarser, outcome_chart, timeline_picture
from workers.audit.integrity import chain_state
from workers.audit.params import parse_time
from workers.audit.rows import EVENT_FIELDS, action_row, event_row, plain
from workers.audit.timeline import Step, action_summaries, steps
from workers.audit.watch import OVERVIEW_SECONDS, OverviewWatch, VerifyWatch
from workers.core.redaction import mask_params
from workers.core.vocabulary import OUTCOMES
from workers.ledger.models import Cursor, EventKind
from workers.ledger.reader import LedgerReader

# Outcomes whose whole message is kept in reservations.dead (sealed), for redrive.
DEAD_LETTERED = frozenset({"failed", "dead_lettered"})
PAGE_SIZE = 50
SID = {prefix: re.compile(f"^{prefix}[0-9a-fA-F]{{32}}$") for prefix in ("WS", "WR", "WT", "WK")}
_STATIC = Path(str(resources.files("workers.audit").joinpath("static")))
_SWAGGER = Path(fastapi_offline.__file__).parent / "static"
# Columns of the search results and their CSV, in the ledger's words.
SEARCH_COLUMNS = (
    "position", "cursor", "recorded_at", "kind", "reservation_sid", "action_id", "action", "from_status",
    "to_status", "attempt", "http_status", "twilio_error_code", "outcome", "correlation_id", "detail",
)  # fmt: skip
STEP_COLUMNS = ("position", "recorded_at", "from_status", "to_status", "source", "action_id", "action",
                "outcome", "etag")  # fmt: skip


class LoginRequired(Exception):
    """No valid session or bearer token: answer with the login form, never with data."""


@dataclass(frozen=True, slots=True)
class Shown:
    """What a page shows: its template and values, and the table its export gives."""

    template: str
    values: dict[str, Any]
    columns: Sequence[str]
    rows: list[dict[str, Any]]
    document: dict[str, Any]


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workers.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = lambda value: value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""
    env.filters["short"] = lambda value: str(value)[:8] if value else ""
    return env


TEMPLATES = _templates()


def render(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """A page; ``auditor`` (who is signed in) and ``exports`` (its CSV and JSON links) if given."""
    page = TEMPLATES.get_template(template).render({"auditor": None, "exports": None, **values})
    return HTMLResponse(page, status_code=status)


def login_page(request: Request, status: int, message: str | None = None) -> HTMLResponse:
    wanted = request.url.path if request.method == "GET" else "/ui/"
    return render("login.html", status, message=message, next=safe_next(wanted))


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a console path only (no other host, no scheme)."""
    if path and path.startswith("/ui/") and not path.startswith("//") and "\\" not in path:
        return path
    return "/ui/"


def auditor_of(request: Request) -> auth.Auditor | None:
    """The auditor a request proves to be: its bearer token, else its session cookie."""
    known: tuple[auth.Auditor, ...] = request.app.state.auditors
    if not known:
        return auth.Auditor("insecure-local", "")  # --insecure-local: nobody to tell apart
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and given:
        return auth.identify(given.strip(), known)
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    return auth.session_auditor(cookie, known, time.time()) if cookie else None


def signed_in(request: Request) -> auth.Auditor:
    """The dependency of every console page: the auditor, or LoginRequired."""
    auditor = auditor_of(request)
    if auditor is None:
        raise LoginRequired
    guard.note_auditor(request, auditor.name)
    return auditor


def install(app: FastAPI, reader_of: Callable[[Request], LedgerReader], secure_cookie: bool) -> None:
    """Add the console's routes, its static files and the offline Swagger UI to ``app``."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=_STATIC), name="console-static")
    app.mount("/ui/swagger", StaticFiles(directory=_SWAGGER), name="swagger-static")

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> HTMLResponse:
        return login_page(request, 401)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return render("swagger.html", title=app.title)

    @router.get("/login")
    def login_form(request: Request, next: str | None = None) -> HTMLResponse:
        return render("login.html", message=None, next=safe_next(next))

    @router.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form(max_length=4096)] = "",
        next: Annotated[str, Form()] = "/ui/",
    ) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return render("login.html", 403, message="sign in from this console's own page", next="/ui/")
        auditor = auth.identify(token.strip(), request.app.state.auditors) if token.strip() else None
        if auditor is None:
            return render("login.html", 401, message="that token is not valid", next=safe_next(next))
        guard.note_auditor(request, auditor.name)
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            auth.session_cookie(auditor, time.time()),
            max_age=auth.SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=secure_cookie or request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    def page(path: str) -> Callable[[Callable[..., Shown]], Callable[..., Response]]:
        """A console page at ``path``: signed in, and exported as CSV or JSON when asked."""

        def decorate(build: Callable[..., Shown]) -> Callable[..., Response]:
            def endpoint(request: Request, **kwargs: Any) -> Response:
                auditor = signed_in(request)
                shown = build(reader_of(request), request, **kwargs)
                wanted = request.query_params.get("export")
                if wanted == "json":
                    return JSONResponse(jsonable_encoder(shown.document), headers=_attachment(path, "json"))
                if wanted == "csv":
                    return Response(_csv(shown.columns, shown.rows), media_type="text/csv; charset=utf-8",
                                    headers=_attachment(path, "csv"))  # fmt: skip
                return render(shown.template, **shown.values, auditor=auditor.name, exports=_exports(request))

            _copy_path_parameters(build, endpoint)
            router.get(path)(endpoint)
            return endpoint

        return decorate

    @page("/")
    def overview(reader: LedgerReader, request: Request) -> Shown:
        watch: VerifyWatch | None = getattr(request.app.state, "verify_watch", None)
        counted: OverviewWatch | None = getattr(request.app.state, "overview_watch", None)
        found = (counted or OverviewWatch(reader)).latest()
        hour = outcome_chart("last hour (5-minute bars)", found.counts, 12, 300)
        day = outcome_chart("last day (1-hour bars)", coarser(found.counts, 12), 24, 3600)
        checkpoint = reader.last_checkpoint()
        rows = [action_row(a) for a in found.attention]
        document = {
            "counted_at": found.counted_at,
            "outcomes_last_hour": hour.totals,
            "outcomes_last_day": day.totals,
            "attention": rows,
            "last_checkpoint": checkpoint,
            "verify": watch.latest if watch else None,
        }
        return Shown(
            "overview.html",
            {"charts": [hour, day], "outcomes": OUTCOMES, "attention": found.attention,
             "checkpoint": checkpoint, "counted_at": found.counted_at, "every": OVERVIEW_SECONDS,
             "watch": watch, "verify": watch.latest if watch else None},
            ("action_id", "action", "reservation_sid", "outcome", "outcome_at", "attempts"),
            rows,
            document,
        )  # fmt: skip

    @page("/search")
    def search(reader: LedgerReader, request: Request) -> Shown:
        form = {name: request.query_params.get(name, "").strip() for name in SEARCH_FIELDS}
        errors, filters, after = search_filters(form)
        found = (
            queries.page(reader, filters, after=after, limit=PAGE_SIZE) if filters and not errors else None
        )
        rows = [event_row(e) for e in found.events] if found else []
        next_page = None
        if found is not None and found.has_more and found.next_cursor is not None:
            next_page = "?" + urlencode(
                {**{k: v for k, v in form.items() if v}, "after": str(found.next_cursor)}
            )
        return Shown(
            "search.html",
            {"form": form, "errors": errors, "rows": rows, "searched": found is not None,
             "next_page": next_page, "outcomes": OUTCOMES, "columns": SEARCH_COLUMNS,
             "archived_notice": queries.archived_notice(found.archived) if found else None},
            SEARCH_COLUMNS,
            rows,
            {"items": rows, "next_cursor": str(found.next_cursor) if found and found.next_cursor else None,
             "has_more": bool(found and found.has_more),
             "archived_months": [f"{m:%Y-%m}" for m in found.archived] if found else []},
        )  # fmt: skip

    @page("/reservations/{reservation_sid}")
    def reservation(reader: LedgerReader, request: Request, reservation_sid: str) -> Shown:
        if not SID["WR"].match(reservation_sid):
            raise NotFound(f"{reservation_sid[:40]!r} is not a reservation SID (WR and 32 hex digits)")
        events = list(queries.iterate(reader, queries.Filters(reservation_sid=reservation_sid)))
        found_steps = steps(events)
        chain = chain_state(*reader.chain(reservation_sid))
        step_rows = [_step_row(s) for s in found_steps]
        actions = action_summaries(events)
        return Shown(
            "reservation.html",
            {"sid": reservation_sid, "state": reader.reservation(reservation_sid), "steps": found_steps,
             "picture": timeline_picture(found_steps), "chain": chain, "actions": actions, "events": events},
            STEP_COLUMNS,
            step_rows,
            {"reservation_sid": reservation_sid, "chain": chain, "steps": step_rows, "actions": actions,
             "events": [event_row(e) for e in events]},
        )  # fmt: skip

    @page("/actions/{action_id}")
    def action(reader: LedgerReader, request: Request, action_id: str) -> Shown:
        try:
            wanted = uuid.UUID(action_id)
        except ValueError:
            raise NotFound(f"{action_id[:40]!r} is not an action id (a UUID)") from None
        story = queries.story(reader, wanted)
        if story is None:
            raise NotFound(f"the ledger never received action {wanted}")
        record = story.record
        message = {**action_row(record), "params": mask_params(record.params or {})}
        settled = next((e for e in story.events if e.settles), None)
        tries = [
            e for e in story.events if e.kind in (EventKind.INTENT, EventKind.ATTEMPT, EventKind.CONFLICT)
        ]
        rows = [event_row(e) for e in story.events]
        return Shown(
            "action.html",
            {"record": record, "message": json.dumps(plain(message), indent=2, ensure_ascii=False),
             "settled": settled, "tries": tries, "events": story.events, "story": story,
             "dead_lettered": record.outcome in DEAD_LETTERED, "redrive": redrive_command(record)},
            EVENT_FIELDS,
            rows,
            {"action": message, "events": rows, "redriven_as": story.redriven_as,
             "redrive_of": story.redrive_of},
        )  # fmt: skip

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTMLResponse:
        auditor = auditor_of(request)
        if auditor is None:
            return login_page(request, 401)
        return render("error.html", 404, message=str(exc), auditor=auditor.name, exports=None)

    app.include_router(router)

    @app.get("/ui", include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)


class NotFound(Exception):
    """A console page for something the ledger does not hold (or an id that cannot be one)."""


SEARCH_FIELDS = (
    "reservation_sid", "task_sid", "worker_sid", "action_id", "correlation_id", "outcome", "since", "until",
    "after",
)  # fmt: skip


def search_filters(form: dict[str, str]) -> tuple[dict[str, str], queries.Filters | None, Cursor | None]:
    """The search form as history filters, or what is wrong with each field (by name). Pure."""
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name, prefix in (("reservation_sid", "WR"), ("task_sid", "WT"), ("worker_sid", "WK")):
        if form.get(name):
            if SID[prefix].match(form[name]):
                values[name] = form[name]
            else:
                errors[name] = f"must be {prefix} and 32 hex digits"
    if form.get("action_id"):
        try:
            values["action_id"] = uuid.UUID(form["action_id"])
        except ValueError:
            errors["action_id"] = "must be a UUID"
    if form.get("correlation_id"):
        if len(form["correlation_id"]) > 200 or any(
            ord(c) < 32 or ord(c) == 127 for c in form["correlation_id"]
        ):
            errors["correlation_id"] = "must be printable text of at most 200 characters"
        else:
            values["correlation_id"] = form["correlation_id"]
    if form.get("outcome"):
        if form["outcome"] in OUTCOMES:
            values["outcome"] = form["outcome"]
        else:
            errors["outcome"] = f"must be one of {', '.join(OUTCOMES)}"
    for name in ("since", "until"):
        if form.get(name):
            try:
                values[name] = parse_time(form[name])
            except ValueError as exc:
                errors[name] = f"{exc} (or YYYY-MM-DD HH:MM, UTC)"
    if "since" in values and "until" in values and values["until"] < values["since"]:
        errors["until"] = "is before since"
    after = None
    if form.get("after"):
        try:
            after = Cursor.parse(form["after"])
        except ValueError:
            errors["after"] = "must be a cursor this console handed out"
    if errors:
        return errors, None, None
    if not values:
        return errors, None, None
    return errors, queries.Filters(**values), after


def redrive_command(record: Any) -> str | None:
    """The command that redrives just this action (its outcome, reservation and time), if any."""
    if record.outcome not in (*DEAD_LETTERED, "indeterminate") or record.outcome_at is None:
        return None
    since = record.outcome_at.isoformat()
    until = (record.outcome_at + timedelta(microseconds=1)).isoformat()
    where = f" --reservation {record.reservation_sid}" if record.reservation_sid else ""
    return (
        f"reservations replay redrive --dry-run --outcome {record.outcome}{where}"
        f" --since {since} --until {until}"
    )


def _step_row(step: Step) -> dict[str, Any]:
    return {name: plain(getattr(step, name)) for name in STEP_COLUMNS}


def _csv(columns: Sequence[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(_cell(row.get(name)) for name in columns)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = (
        json.dumps(plain(value), ensure_ascii=False) if isinstance(value, dict | list) else str(plain(value))
    )
    # A cell that a spreadsheet would run as a formula is quoted as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _NUMBER.match(text) else text


_NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")


def _attachment(path: str, extension: str) -> dict[str, str]:
    name = path.strip("/").split("/")[0] or "overview"
    return {"Content-Disposition": f'attachment; filename="{name}.{extension}"'}


def _exports(request: Request) -> dict[str, str]:
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "export"]
    return {kind: "?" + urlencode([*query, ("export", kind)]) for kind in ("csv", "json")}


def _copy_path_parameters(build: Callable[..., Shown], endpoint: Callable[..., Response]) -> None:
    """Give ``endpoint`` the signature FastAPI reads: the request, and ``build``'s path parameters."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [p for name, p in inspect.signature(build).parameters.items() if name not in ("reader", "request")]
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", keyword, annotation=Request), *(p.replace(kind=keyword) for p in own)]
    )
