"""``reservations reconcile``: backfill the ledger from TaskRouter's Events resource."""

from __future__ import annotations

import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from workers.cli.history import SidType, TimeType
from workers.cli.options import database_url_option, env_option
from workers.config import Settings

# How far back TaskRouter keeps events.
RETENTION = timedelta(days=30)
_AGO = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class SinceType(TimeType):
    """A time (RFC 3339, or ``YYYY-MM-DD[ HH:MM[:SS]]`` in UTC), or how long ago: ``90m``, ``6h``, ``2d``."""

    name = "TIME|AGO"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        found = _AGO.match(str(value).strip()) if isinstance(value, str) else None
        if found is not None:
            return datetime.now(UTC) - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
        return super().convert(value, param, ctx)


@click.command("reconcile")
@env_option(
    "--workspace",
    "workspaces",
    envvar="RECONCILE_WORKSPACES",
    type=SidType("WS"),
    multiple=True,
    required=True,
    help="A workspace to read the events of (repeat for several; in the environment, separated by spaces).",
)
@env_option(
    "--since",
    envvar="RECONCILE_SINCE",
    type=SinceType(),
    default="24h",
    help="From when: a time, or how long ago (90m, 6h, 2d). TaskRouter keeps 30 days.",
)
@click.option("--until", type=TimeType(), default=None, help="Up to when (default: now).")
@click.option(
    "--reservation",
    "reservations",
    type=SidType("WR"),
    multiple=True,
    help="Only these reservations (repeat for several).",
)
@database_url_option("The ledger; written as reservations_writer, through the ledger's functions.")
def reconcile(
    workspaces: tuple[str, ...],
    since: datetime,
    until: datetime | None,
    reservations: tuple[str, ...],
    database_url: str,
) -> None:
    """Record in the ledger every reservation event TaskRouter kept that the ledger missed.

    Reads the Events resource of each workspace through the twilio SDK (TASKROUTER_BASE_URL and
    the TWILIO_* credentials) and records each reservation change as a transition with
    source=event, exactly as the events API would have. Safe to run any time, as often as you
    like: a transition the ledger holds already (from a callback, our own update, an earlier
    run) is not recorded again. Run it after an outage of the events API, and periodically
    (ops/RUNBOOK.md, "TaskRouter events"). Exit 0 when done, 2 on a usage or configuration error,
    1 when TaskRouter or the ledger failed.
    """
    from workers.errors import ConfigurationError, ReservationsError
    from workers.events.reconcile import reconcile as run
    from workers.ledger.connector import Connector
    from workers.ledger.models import Role
    from workers.ledger.writer import PostgresLedgerWriter
    from workers.taskrouter.gateway import TaskRouterGateway

    now = datetime.now(UTC)
    if since < now - RETENTION:
        click.echo(
            f"note: TaskRouter keeps events for 30 days; reading from {now - RETENTION:%Y-%m-%d %H:%M}Z",
            err=True,
        )
        since = now - RETENTION
    try:
        gateway = TaskRouterGateway.from_settings(Settings.from_env())
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        with Connector(database_url, Role.WRITER, min_size=1, max_size=1) as connector:
            writer = PostgresLedgerWriter(connector, b"")
            report = run(gateway, writer, workspaces, since, until, reservations)
    except ReservationsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(report)
