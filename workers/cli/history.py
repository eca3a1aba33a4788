"""``reservations history`` and ``reservations show``: the ledger as auditors read it."""

from __future__ import annotations

import csv
import json
import sys
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NoReturn, TextIO

import click
from rich.console import Console
from rich.table import Table

from workers.audit import queries
from workers.audit.params import parse_time
from workers.audit.rows import EVENT_FIELDS, action_row, event_row
from workers.cli.options import database_url_option, env_option
from workers.config import Settings
from workers.core.sids import is_sid
from workers.errors import ReservationsError
from workers.ledger.connector import Connector
from workers.ledger.models import Cursor, EventKind, LedgerRow, Outcome, Role
from workers.ledger.pii import resolve_pii_key
from workers.ledger.reader import LedgerReader

FORMATS = ("table", "json", "csv")

reader_database_url = database_url_option(
    "PostgreSQL connection URL of the ledger (read as reservations_reader)."
)


format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    envvar="RESERVATIONS_OUTPUT_FORMAT",
    show_envvar=True,
    default=None,
    help="A table (the default in a terminal), JSON lines (the default otherwise), or CSV.",
)


class TimeType(click.ParamType[datetime, Any]):
    """RFC 3339 (``2026-01-31T12:00:00Z``), or ``YYYY-MM-DD[ HH:MM[:SS]]`` in UTC."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(f"{value!r} {exc}", param, ctx)


class SidType(click.ParamType[str, Any]):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.name = f"{prefix}SID"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not is_sid(text, self.prefix):
            self.fail(f"{text!r} is not a {self.prefix} SID ({self.prefix} and 32 hex digits)", param, ctx)
        return text


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def open_reader(database_url: str) -> LedgerReader:
    """A select-only ledger; it knows LEDGER_PII_KEY only to hash a --pii-value to search for."""
    pii_key = resolve_pii_key(Settings.from_env().ledger_pii_key)  # a bad setting first, in one line
    connector = Connector(database_url, Role.READER, min_size=1, max_size=1)
    connector.open()
    return LedgerReader(connector, pii_key)


def chosen_format(output_format: str | None, stream: TextIO | None = None) -> str:
    """The format asked for, else a table in a terminal and JSON lines in a pipe or file."""
    if output_format is not None:
        return output_format
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "json"


def write_events(events: Iterable[LedgerRow], output_format: str, title: str | None = None) -> int:
    """Print ``events`` in ``output_format``; returns how many were printed."""
    out = sys.stdout
    count = 0
    if output_format == "json":
        for event in events:
            out.write(json.dumps(event_row(event), separators=(",", ":")) + "\n")
            count += 1
    elif output_format == "csv":
        writer = csv.DictWriter(out, fieldnames=EVENT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for event in events:
            row = event_row(event)
            if row["params"] is not None:
                row["params"] = json.dumps(row["params"], sort_keys=True, separators=(",", ":"))
            writer.writerow(row)
            count += 1
    else:
        table = event_table(title)
        for event in events:
            add_event(table, event)
            count += 1
        console().print(table)
    return count


def console() -> Console:
    """Rich's console on stdout; a wide one when stdout is not a terminal (a file, a pager)."""
    return Console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 250)


def event_table(title: str | None = None) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in (
        "position",
        "recorded_at",
        "kind",
        "reservation_sid",
        "action_id",
        "status",
        "source",
        "outcome",
    ):
        table.add_column(column, no_wrap=column in ("position", "recorded_at"))
    for column in ("attempt", "http", "twilio_error_code", "detail"):
        table.add_column(column)
    return table


def add_event(table: Table, event: LedgerRow) -> None:
    status = ""
    if event.from_status or event.to_status:
        status = f"{event.from_status or '?'} → {event.to_status or '?'}"
    table.add_row(
        str(event.position),
        event.recorded_at.isoformat(timespec="milliseconds"),
        event.kind,
        event.reservation_sid or "",
        str(event.action_id or ""),
        status,
        event.source or "",
        event.outcome or "",
        _text(event.attempt),
        _text(event.http_status),
        _text(event.twilio_error_code),
        event.detail or "",
    )


def _text(value: object) -> str:
    return "" if value is None else str(value)


@click.command()
@reader_database_url
@click.option("--reservation", "reservation_sid", type=SidType("WR"), help="A reservation SID (WR...).")
@click.option("--task", "task_sid", type=SidType("WT"), help="A task SID (WT...).")
@click.option("--worker", "worker_sid", type=SidType("WK"), help="A worker SID (WK...).")
@click.option("--workspace", "workspace_sid", type=SidType("WS"), help="A workspace SID (WS...).")
@click.option("--action-id", type=click.UUID, help="An action_id.")
@click.option("--correlation-id", help="A producer's correlation id.")
@click.option(
    "--since",
    type=TimeType(),
    help="From this time (inclusive; the database clock): RFC 3339, or YYYY-MM-DD[ HH:MM[:SS]] in UTC.",
)
@click.option("--until", type=TimeType(), help="Up to this time (exclusive).")
@click.option("--kind", type=click.Choice([k.value for k in EventKind]), help="Only rows of this kind.")
@click.option(
    "--outcome",
    type=click.Choice([o.value for o in Outcome]),
    help="Only rows that settle an action with this outcome (an applied action's is its transition).",
)
@click.option(
    "--twilio-error-code", type=click.IntRange(0, 2**31 - 1), help="Only rows with this Twilio error code."
)
@click.option("--after", help="Resume after this cursor (<tx_id>:<position>, the `cursor` field of a row).")
@env_option(
    "--limit",
    type=click.IntRange(0),
    envvar="RESERVATIONS_HISTORY_LIMIT",
    default=1000,
    help="At most this many rows; 0 for all.",
)
@click.option(
    "--pii-value",
    help="Rows whose PII parameters (To, From, CallTo, ...) held this value; needs the LEDGER_PII_KEY "
    "the workers use.",
)
@format_option
def history(
    database_url: str,
    reservation_sid: str | None,
    task_sid: str | None,
    worker_sid: str | None,
    workspace_sid: str | None,
    action_id: uuid.UUID | None,
    correlation_id: str | None,
    since: datetime | None,
    until: datetime | None,
    kind: str | None,
    outcome: str | None,
    twilio_error_code: int | None,
    after: str | None,
    limit: int,
    pii_value: str | None,
    output_format: str | None,
) -> None:
    """Ledger rows matching every filter given, in ledger order.

    JSON lines and CSV name the fields as the ledger does (`position` is the row's place in its
    table); `cursor` is where to resume with --after.
    """
    try:
        cursor = Cursor.parse(after) if after else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--after") from None
    filters = queries.Filters(
        reservation_sid=reservation_sid,
        task_sid=task_sid,
        worker_sid=worker_sid,
        workspace_sid=workspace_sid,
        action_id=action_id,
        correlation_id=correlation_id,
        kind=kind,
        outcome=outcome,
        twilio_error_code=twilio_error_code,
        since=since,
        until=until,
        pii_value=pii_value,
    )
    fmt = chosen_format(output_format)
    try:
        with open_reader(database_url) as reader:
            archived = queries.archived_reached(reader.detached_months(), since, until)
            events = queries.iterate(reader, filters, after=cursor)
            if limit:
                events = (event for _, event in zip(range(limit), events, strict=False))
            count = write_events(events, fmt)
    except ReservationsError as exc:
        fail(str(exc))
    if fmt == "table":
        click.echo(f"{count} row(s)", err=True)
    notice = queries.archived_notice(archived)
    if notice is not None:
        click.echo(f"note: {notice}", err=True)


@click.command()
@reader_database_url
@click.argument("action_id", type=click.UUID)
@format_option
def show(database_url: str, action_id: uuid.UUID, output_format: str | None) -> None:
    """One action's whole story: what was received, every attempt, conflict and transition,
    how it ended, and its redrive links. Exit status 1 if the ledger never received it."""
    fmt = chosen_format(output_format)
    try:
        with open_reader(database_url) as reader:
            found = queries.story(reader, action_id)
    except ReservationsError as exc:
        fail(str(exc))
    if found is None:
        fail(f"the ledger never received action {action_id}", 1)
    entry = action_row(found.record)
    links = {
        "redriven_as": [str(a) for a in found.redriven_as],
        "redrive_of": str(found.redrive_of) if found.redrive_of else None,
    }
    if fmt == "json":
        story = {"action": entry, **links, "events": [event_row(e) for e in found.events]}
        click.echo(json.dumps(story, separators=(",", ":")))
        return
    if fmt == "csv":
        write_events(found.events, "csv")
        return
    out = console()
    summary = Table(show_header=False, title=f"action {action_id}", title_justify="left")
    summary.add_column("field", style="bold")
    summary.add_column("value")
    for key, value in {**entry, **links}.items():
        if key == "action_id" or value in (None, [], {}):
            continue
        shown = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
        summary.add_row(key, shown)
    out.print(summary)
    table = event_table("ledger rows")
    for event in found.events:
        add_event(table, event)
    out.print(table)
