"""``reservations enqueue``: publish actions from the shell, validated, with publisher confirms.

Operators give one action as a JSON argument, or a file (``-`` for stdin) holding one JSON object
(pretty-printed or not, like the schema's examples), a JSON array of them, or JSON lines. Each
action is checked against the v1 schema exactly as the intake will check it, then published to
the ``reservations`` exchange like any producer's (:class:`workers.broker.producer.Producer`). Invalid
entries are reported with their line (JSON lines) or item number (an array) and skipped; the exit
status is 1 if any was invalid or unconfirmed, so a script notices.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import click

from workers.cli.options import broker_url_option

# One entry of the input: where it is ("line 3", "item 2") and the action, or why it is not one.
Entry = tuple[str, "dict[str, Any] | ValueError"]


def entries(text: str) -> list[Entry]:
    """The actions of a file: one JSON document (an object, or an array of objects), else JSON
    lines. A file that is neither says why once (a pretty-printed object's syntax error is
    reported where it is, not as a bad line for each of its lines)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not lines:
            return []
        if isinstance(_parsed(lines[0][1]), ValueError) or text.lstrip().startswith("["):
            return [
                ("file", ValueError(f"not JSON: {whole.msg} at line {whole.lineno} column {whole.colno}"))
            ]
        return [(f"line {number}", _object(_parsed(line))) for number, line in lines]
    if isinstance(document, list):
        return [(f"item {number}", _object(item)) for number, item in enumerate(document, start=1)]
    return [("line 1", _object(document))]


def _parsed(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return ValueError(f"not JSON: {exc.msg} at column {exc.colno}")


def _object(value: object) -> dict[str, Any] | ValueError:
    if isinstance(value, ValueError | dict):
        return value
    return ValueError("not a JSON object")


@click.command()
@click.argument("message", required=False)
@click.option(
    "--file",
    "-f",
    "source",
    type=click.File("r", encoding="utf-8"),
    help="Read actions from this file ('-' for stdin): one JSON object, a JSON array of them, or JSON lines.",
)
@broker_url_option("RabbitMQ.")
@click.option("--dry-run", is_flag=True, help="Validate only; publish nothing.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar while reading a file (default: when stderr is a terminal).",
)
def enqueue(
    message: str | None, source: IO[str] | None, broker_url: str, dry_run: bool, progress: bool | None
) -> None:
    """Validate and publish reservation actions (the v1 JSON wire format).

    \b
    reservations enqueue '{"schema": "reservation-action/v1", "action": "accept", ...}'
    reservations enqueue --file actions.jsonl
    reservations enqueue --file schemas/examples/reservation-action.v1/accept.json
    producer-job | reservations enqueue --file -
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from workers.broker.producer import InvalidAction, Producer, PublishError, encode

    if (message is None) == (source is None):
        raise click.UsageError(
            "give one action as an argument, or --file (a JSON object, array or JSON lines; '-' for stdin)"
        )
    errors = Console(stderr=True)
    actions = [("argument", _object(_parsed(message)))] if message is not None else entries(source.read())  # type: ignore[union-attr]
    show = errors.is_terminal if progress is None else progress
    published = failed = 0
    with (
        Producer(broker_url) as producer,
        Progress(
            TextColumn("enqueue"), BarColumn(), MofNCompleteColumn(), console=errors, disable=not show
        ) as bar,
    ):
        task = bar.add_task("enqueue", total=len(actions))
        for where, action in actions:
            try:
                if isinstance(action, ValueError):
                    raise action
                if dry_run:
                    encode(action)
                else:
                    producer.publish(action)
                published += 1
            except (ValueError, InvalidAction, PublishError) as exc:
                failed += 1
                errors.print(f"{where}: {exc}", markup=False, highlight=False)
                if isinstance(exc, PublishError) and "NOT_FOUND" in str(exc):
                    break  # the exchange is missing: every other line would fail the same way
            bar.advance(task)
    verb = "valid" if dry_run else "published"
    click.echo(f"{published} {verb}, {failed} failed", err=failed > 0)
    if failed:
        sys.exit(1)
