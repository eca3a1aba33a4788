"""``reservations migrate`` and ``reservations ledger ...``: the ledger's operator commands."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from workers.cli.options import database_url_option
from workers.errors import ReservationsError
from workers.ledger import migrations
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.verify import latest_checkpoint, seal_checkpoint, verify

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

_database_url = database_url_option("PostgreSQL connection URL of the ledger.")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.command(epilog=ROLES_HELP)
@database_url_option(
    "Where to migrate, as a role that is a member of reservations_owner (or a superuser).", migrations=True
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
            with connect(database_url, Role.WRITER) as conn:
                seal_checkpoint(conn)
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
        with connect(database_url, Role.WRITER) as conn:
            sealed = seal_checkpoint(conn)
    except ReservationsError as exc:
        _fail(str(exc))
    click.echo(
        f"checkpoint {sealed.checkpoint_id}: {sealed.chains} chain head(s) sealed,"
        f" up to position {sealed.max_position}, digest {sealed.digest.hex()}"
    )


def _expected_checkpoint(value: str) -> tuple[int, bytes]:
    checkpoint_id, _, digest = value.partition(":")
    try:
        return int(checkpoint_id), bytes.fromhex(digest)
    except ValueError:
        raise click.BadParameter(f"expected ID:DIGEST (hex), not {value!r}") from None
