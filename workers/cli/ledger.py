"""``reservations migrate`` and ``reservations ledger ...``: the ledger's operator commands."""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any, NoReturn

import click

from workers.config import DEFAULT_DATABASE_URL, Settings
from workers.errors import ReservationsError
from workers.ledger import migrations, projection
from workers.ledger.connector import Connector, connect
from workers.ledger.models import Cursor, LedgerEvent, Role
from workers.ledger.store import Ledger, resolve_pii_key
from workers.ledger.verify import latest_checkpoint, verify

ROLES_HELP = """
\b
Roles (created by the first migration, NOLOGIN, shared by the whole cluster):
  reservations_owner   owns the ledger's schema; runs migrations and projection rebuilds
  reservations_writer  the workers: INSERT and SELECT on the ledger (no UPDATE, DELETE,
                       TRUNCATE, and no way to switch its guards off)
  reservations_reader  auditors and `ledger verify`: SELECT only
In production, log in as your own roles and make each a member of one of these, e.g.
  CREATE ROLE reservations_migrator LOGIN IN ROLE reservations_owner;
  CREATE ROLE reservations_app LOGIN IN ROLE reservations_writer;
  CREATE ROLE auditor LOGIN IN ROLE reservations_reader;
The commands SET ROLE to the role they need, so even a superuser URL cannot change the ledger.
"""

_database_url = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    show_envvar=True,
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="PostgreSQL connection URL of the ledger.",
)


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(epilog=ROLES_HELP)
@click.option(
    "--database-url",
    envvar=["LEDGER_MIGRATION_URL", "DATABASE_URL"],
    show_envvar=True,
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="Where to migrate, as a role that is a member of reservations_owner (or a superuser).",
)
@click.option("--check", is_flag=True, help="Only list the pending migrations; exit 1 if there are any.")
def migrate(database_url: str, check: bool) -> None:
    """Apply the ledger's SQL migrations (idempotent), creating the database if needed.

    Refuses (exit 2) to touch a database that has applied migrations this release does not know.
    """
    try:
        if check:
            todo = migrations.check(database_url)
            for migration in todo:
                click.echo(f"pending: {migration}")
            sys.exit(1 if todo else 0)
        applied = migrations.migrate(database_url)
    except ReservationsError as exc:
        _fail(str(exc))
    for migration in applied:
        click.echo(f"applied: {migration}")
    if not applied:
        click.echo("the ledger is up to date")


@click.group(epilog=ROLES_HELP)
def ledger() -> None:
    """Verify, checkpoint, rebuild and query the ledger."""


@ledger.command("verify")
@_database_url
@click.option("--checkpoint", is_flag=True, help="When the ledger verifies, seal a new checkpoint.")
@click.option(
    "--expect-checkpoint",
    "expected",
    multiple=True,
    metavar="ID:DIGEST",
    callback=lambda _ctx, _param, values: [_expected_checkpoint(v) for v in values],
    help="A checkpoint digest noted earlier outside the database; it must still match. Repeatable.",
)
def verify_command(database_url: str, checkpoint: bool, expected: list[tuple[int, bytes]]) -> None:
    """Check every hash chain and checkpoint; print each problem with its ledger position.

    Exit status 0 when the ledger is intact, 1 when anything was altered, removed or inserted,
    2 when it could not be checked. Note the printed checkpoint digest somewhere outside the
    database: it is what proves that whole chains were not rewritten since.
    """
    try:
        with connect(database_url, Role.READER) as conn:
            problems = verify(conn, expected)
            for problem in problems:
                click.echo(str(problem))
            if problems:
                click.echo(f"ledger verification FAILED: {len(problems)} problem(s)", err=True)
                sys.exit(1)
        if checkpoint:
            with Ledger(_opened(database_url, Role.WRITER), "") as writer:
                writer.checkpoint()
        with connect(database_url, Role.READER) as conn:
            latest = latest_checkpoint(conn)
    except ReservationsError as exc:
        _fail(str(exc))
    click.echo("ledger verified: every chain is intact")
    if latest is not None:
        click.echo(
            f"latest checkpoint {latest.checkpoint_id}: {latest.chains} chain head(s) sealed,"
            f" up to position {latest.max_position}, digest {latest.digest.hex()}"
        )


@ledger.command("checkpoint")
@_database_url
def checkpoint_command(database_url: str) -> None:
    """Seal the chain heads that moved since the last checkpoint, and print the digest."""
    try:
        with Ledger(_opened(database_url, Role.WRITER), "") as writer:
            sealed = writer.checkpoint()
    except ReservationsError as exc:
        _fail(str(exc))
    click.echo(
        f"checkpoint {sealed.checkpoint_id}: {sealed.chains} chain head(s) sealed,"
        f" up to position {sealed.max_position}, digest {sealed.digest.hex()}"
    )


@ledger.command("rebuild-projection")
@click.option(
    "--database-url",
    envvar=["LEDGER_MIGRATION_URL", "DATABASE_URL"],
    show_envvar=True,
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="The ledger; rebuilding (without --check) needs a member of reservations_owner.",
)
@click.option(
    "--check", is_flag=True, help="Only compare the projection with the ledger; exit 1 if they differ."
)
def rebuild_projection(database_url: str, check: bool) -> None:
    """Recompute every reservation's status and ETag from the ledger alone."""
    try:
        with connect(database_url, Role.READER) as conn:
            rebuilt = projection.rebuild(conn)
            differences = projection.differences(projection.current(conn), rebuilt)
        if check:
            for line in differences:
                click.echo(line)
            click.echo(f"{len(differences)} difference(s) over {len(rebuilt)} reservation(s)")
            sys.exit(1 if differences else 0)
        with connect(database_url, Role.OWNER) as conn:
            projection.replace(conn, rebuilt)
    except ReservationsError as exc:
        _fail(str(exc))
    click.echo(f"projection rebuilt: {len(rebuilt)} reservation(s), {len(differences)} corrected")


@ledger.command("history")
@_database_url
@click.option("--reservation", "reservation_sid", help="A reservation SID (WR...).")
@click.option("--task", "task_sid", help="A task SID (WT...).")
@click.option("--worker", "worker_sid", help="A worker SID (WK...).")
@click.option("--workspace", "workspace_sid", help="A workspace SID (WS...).")
@click.option("--action", "action_id", type=click.UUID, help="An action_id.")
@click.option("--correlation-id", help="A producer's correlation id.")
@click.option("--since", type=click.DateTime(), help="From this time (inclusive, database clock, UTC).")
@click.option("--until", type=click.DateTime(), help="Up to this time (exclusive).")
@click.option(
    "--pii-value",
    envvar="LEDGER_PII_VALUE",
    help="Rows whose PII parameters held this value (needs LEDGER_PII_KEY).",
)
@click.option("--after", help="Resume after this cursor (<tx_id>:<position>, printed with each row).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
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
    pii_value: str | None,
    after: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Print ledger rows in ledger order, filtered by any of the options (all must match)."""
    settings = Settings.from_env()
    key = resolve_pii_key(settings.ledger_pii_key) if pii_value is not None else ""
    try:
        cursor = Cursor.parse(after) if after else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--after") from None
    try:
        with Ledger(_opened(database_url, Role.READER), key) as reader:
            rows = reader.history(
                reservation_sid=reservation_sid,
                task_sid=task_sid,
                worker_sid=worker_sid,
                workspace_sid=workspace_sid,
                action_id=action_id,
                correlation_id=correlation_id,
                since=since,
                until=until,
                pii_value=pii_value,
                after=cursor,
                limit=limit,
            )
    except ReservationsError as exc:
        _fail(str(exc))
    for row in rows:
        click.echo(json.dumps(_jsonable(row), sort_keys=True) if as_json else _line(row))


def _expected_checkpoint(value: str) -> tuple[int, bytes]:
    checkpoint_id, _, digest = value.partition(":")
    try:
        return int(checkpoint_id), bytes.fromhex(digest)
    except ValueError:
        raise click.BadParameter(f"expected ID:DIGEST (hex), not {value!r}") from None


def _opened(database_url: str, role: Role) -> Connector:
    connector = Connector(database_url, role, min_size=1, max_size=1)
    connector.open()
    return connector


def _jsonable(event: LedgerEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in asdict(event).items():
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        out[key] = value
    out["cursor"] = str(event.cursor)
    return out


def _line(event: LedgerEvent) -> str:
    parts = [
        str(event.cursor),
        event.recorded_at.isoformat(timespec="milliseconds"),
        event.kind,
        event.reservation_sid or "-",
        str(event.action_id or "-"),
    ]
    if event.from_status or event.to_status:
        parts.append(f"{event.from_status or '?'}->{event.to_status or '?'}")
    for label, value in (
        ("outcome", event.outcome),
        ("attempt", event.attempt),
        ("http", event.http_status),
        ("error", event.twilio_error_code),
        ("etag", event.etag_after or event.etag_before),
    ):
        if value is not None:
            parts.append(f"{label}={value}")
    return "  ".join(parts)
