"""``reservations replay rebuild|redrive|timeline``: replay the ledger, redrive dead letters."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click
from rich.table import Table

from workers.audit.rows import plain
from workers.audit.timeline import timeline as reservation_timeline
from workers.broker.sealing import keyring
from workers.cli.history import (
    SidType,
    TimeType,
    chosen_format,
    console,
    fail,
    open_reader,
    reader_database_url,
)
from workers.cli.options import broker_url_option, database_url_option
from workers.composition import create_app
from workers.config import Settings
from workers.core.action import Action
from workers.errors import ReservationsError
from workers.ledger.connector import Connector
from workers.ledger.models import Role
from workers.ledger.pii import resolve_pii_key
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.replay import redrive as redriving
from workers.replay.rebuild import rebuild as rebuild_projection


@click.group()
def replay() -> None:
    """Rebuild the projection, reconstruct a reservation's timeline, redrive dead letters.

    `reservations ledger verify` checks the hash chains the replay relies on.
    """


@replay.command("rebuild")
@database_url_option("The ledger; --apply needs a member of reservations_owner.", migrations=True)
@click.option("--apply", "apply_", is_flag=True, help="Overwrite the live projection with the rebuild.")
@click.option(
    "--verify/--no-verify",
    "check_chains",
    default=True,
    show_default=True,
    help="Verify the ledger's hash chains first (as `reservations ledger verify`); refuse if they break.",
)
def rebuild(database_url: str, apply_: bool, check_chains: bool) -> None:
    """Rebuild the projection from the ledger alone and report every difference from the live one.

    Exit status 0 when they are identical (or --apply corrected them), 1 when they differ or
    the ledger's chains do not verify, 2 on an error.
    """
    try:
        report = rebuild_projection(database_url, replace=apply_, check_chains=check_chains)
    except ReservationsError as exc:
        fail(str(exc))
    if report.problems:
        for problem in report.problems:
            click.echo(str(problem))
        fail(f"the ledger does not verify ({len(report.problems)} problem(s)): not rebuilt", 1)
    for line in report.differences:
        click.echo(line)
    click.echo(f"{len(report.differences)} difference(s) over {len(report.rebuilt)} reservation(s)")
    if report.replaced:
        click.echo("the projection was replaced by the rebuild")
    elif report.differences:
        sys.exit(1)


@replay.command("timeline")
@reader_database_url
@click.option("--reservation", "reservation_sid", type=SidType("WR"), required=True, help="WR...")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(("table", "json")),
    envvar="RESERVATIONS_OUTPUT_FORMAT",
    show_envvar=True,
    default=None,
    help="A table (the default in a terminal) or JSON lines.",
)
def timeline(database_url: str, reservation_sid: str, output_format: str | None) -> None:
    """The reservation's status over time, reconstructed from the ledger alone."""
    try:
        with open_reader(database_url) as reader:
            steps = reservation_timeline(reader, reservation_sid)
    except ReservationsError as exc:
        fail(str(exc))
    if chosen_format(output_format if output_format != "csv" else "json") == "json":
        for step in steps:
            row = {name: plain(getattr(step, name)) for name in step.__dataclass_fields__}
            click.echo(json.dumps(row, separators=(",", ":")))
        return
    table = Table(title=f"reservation {reservation_sid}", header_style="bold")
    for column in ("position", "recorded_at", "status", "source", "etag", "action", "action_id", "outcome"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            str(step.position),
            step.recorded_at.isoformat(timespec="milliseconds"),
            f"{step.from_status or '(first seen)'} → {step.to_status}",
            step.source or "",
            step.etag or "",
            step.action or "(observed)",
            str(step.action_id or ""),
            step.outcome or "",
        )
    console().print(table)
    if not steps:
        click.echo("the ledger has no transition of this reservation", err=True)


REDRIVE_HELP = """
\b
How a redrive works:
  * The ledger keeps PII only as keyed hashes, so the whole message of an action that
    ended failed or dead_lettered is kept in the queue reservations.dead; that is
    where redrive takes it from (matched by the x-reservations-action-id header or the
    message's action_id).
  * The registry's outcome is final per action_id, so the message is sent again under
    a NEW action_id, with the same correlation_id and producer "redrive", through the
    normal producer (publisher confirms). The original gets a `redrive` row in the
    ledger: "redriven as <new action_id>" (see `reservations show`).
  * The dead letter is acknowledged (removed) only after the copy was confirmed by
    the broker and the redrive recorded; anything not redriven stays in the queue.
  * The copy goes through the whole If-Match protocol again: a reservation that moved
    on meanwhile ends invalid_transition or already_applied, never a blind overwrite.
  * An action whose message is not in reservations.dead is reported as not
    redrivable, with the reason. Dead letters whose action the ledger never settled
    (the ledger was down) are redriven when their header's outcome is selected and
    no --since/--until/--twilio-error-code is given.
  * An original is redriven at most once: should a dead letter come back after its
    redrive (a lost acknowledgement), it is left in the queue and reported as stale.
  * --dry-run lists what would be done and changes nothing: the messages are read
    without acknowledgement and return to the queue when the command ends.
"""


@replay.command("redrive", epilog=REDRIVE_HELP)
@database_url_option("The ledger (the redrive rows are written as reservations_writer).")
@broker_url_option("RabbitMQ: where reservations.dead is and where the copies are published.")
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    type=click.Choice(sorted(redriving.REDRIVABLE_ON_REQUEST)),
    help="Only actions that ended so (repeatable; default: dead_lettered and failed). indeterminate"
    " only when named: check the evidence first, its update may have landed.",
)
@click.option("--reservation", "reservation_sid", type=SidType("WR"), help="Only this reservation (WR...).")
@click.option("--since", type=TimeType(), help="Only outcomes recorded from this time (inclusive).")
@click.option("--until", type=TimeType(), help="Only outcomes recorded before this time.")
@click.option(
    "--twilio-error-code", type=click.IntRange(0, 2**31 - 1), help="Only actions with this Twilio error."
)
@click.option("--dry-run", is_flag=True, help="List what would be redriven; change nothing.")
@click.option(
    "--max-messages",
    type=click.IntRange(1),
    envvar="REDRIVE_MAX_MESSAGES",
    show_envvar=True,
    default=redriving.DEFAULT_MAX_MESSAGES,
    show_default=True,
    help="Read at most this many dead letters (and select at most this many actions).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per action instead of lines of text.")
def redrive(
    database_url: str,
    broker_url: str,
    outcomes: tuple[str, ...],
    reservation_sid: str | None,
    since: datetime | None,
    until: datetime | None,
    twilio_error_code: int | None,
    dry_run: bool,
    max_messages: int,
    as_json: bool,
) -> None:
    """Re-enqueue actions that ended dead_lettered or failed, from reservations.dead.

    Exit status 0 when everything selected was redriven (or would be, with --dry-run), 1 when
    some selected action was not redrivable, 2 on an error.
    """
    filters = redriving.RedriveFilters(
        outcomes=frozenset(outcomes) or redriving.REDRIVABLE_OUTCOMES,
        reservation_sid=reservation_sid,
        since=since,
        until=until,
        twilio_error_code=twilio_error_code,
    )
    settings = Settings.from_env()
    app = create_app(Settings(broker_url=broker_url, database_url=database_url))

    def publish(action: Action) -> None:
        app.enqueue(action)

    try:
        pii_key = resolve_pii_key(settings.ledger_pii_key)
        with (
            Connector(database_url, Role.READER, min_size=1, max_size=1) as reading,
            Connector(database_url, Role.WRITER, min_size=1, max_size=1) as writing,
            redriving.dead_letters(broker_url, max_messages, keyring(settings.dead_letter_key)) as letters,
        ):
            reader, writer = LedgerReader(reading, pii_key), PostgresLedgerWriter(writing, pii_key)
            decisions = redriving.redrive(
                reader, writer, letters, publish, filters, dry_run=dry_run, limit=max_messages
            )
    except ReservationsError as exc:
        fail(str(exc))
    except OSError as exc:  # the broker
        fail(f"RabbitMQ: {exc}")
    finally:
        app.close()
    for decision in decisions:
        if as_json:
            row = {name: plain(getattr(decision, name)) for name in decision.__dataclass_fields__}
            click.echo(json.dumps(row, separators=(",", ":")))
        else:
            click.echo(
                f"{decision.verdict}  {decision.action_id or '-'}  {decision.reservation_sid or '-'}"
                f"  {decision.outcome or '-'}  {decision.reason}"
            )
    counts: dict[str, int] = {}
    for decision in decisions:
        counts[decision.verdict] = counts.get(decision.verdict, 0) + 1
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items())) or "nothing to redrive"
    click.echo(("dry run: " if dry_run else "") + summary, err=True)
    if counts.get(redriving.Verdict.NOT_REDRIVABLE):
        sys.exit(1)
