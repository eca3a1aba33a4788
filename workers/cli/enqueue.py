"""``reservations enqueue``: publish actions from the shell, validated, with publisher confirms.

Operators give one action as a JSON argument, or JSON lines from a file (``-`` for stdin). Each
action is checked against the v1 schema exactly as the intake will check it, then published to
the ``reservations`` exchange like any producer's (:class:`workers.broker.producer.Producer`). Invalid
lines are reported with their line number and skipped; the exit status is 1 if any line was
invalid or unconfirmed, so a script notices.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from workers.cli.options import broker_url_option


def _lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            yield number, line


def _parse(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message


@click.command()
@click.argument("message", required=False)
@click.option(
    "--file",
    "-f",
    "source",
    type=click.File("r", encoding="utf-8"),
    help="Read actions as JSON lines from this file ('-' for stdin).",
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
    producer-job | reservations enqueue --file -
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from workers.broker.producer import InvalidAction, Producer, PublishError, encode

    if (message is None) == (source is None):
        raise click.UsageError("give one action as an argument, or --file (JSON lines; '-' for stdin)")
    errors = Console(stderr=True)
    entries: list[tuple[int, str]] = [(1, message)] if message is not None else list(_lines(source))  # type: ignore[arg-type]
    show = errors.is_terminal if progress is None else progress
    published = failed = 0
    with (
        Producer(broker_url) as producer,
        Progress(
            TextColumn("enqueue"), BarColumn(), MofNCompleteColumn(), console=errors, disable=not show
        ) as bar,
    ):
        task = bar.add_task("enqueue", total=len(entries))
        for number, text in entries:
            try:
                action = _parse(text)
                if dry_run:
                    encode(action)
                else:
                    producer.publish(action)
                published += 1
            except (ValueError, InvalidAction, PublishError) as exc:
                failed += 1
                errors.print(f"line {number}: {exc}", markup=False, highlight=False)
                if isinstance(exc, PublishError) and "NOT_FOUND" in str(exc):
                    break  # the exchange is missing: every other line would fail the same way
            bar.advance(task)
    verb = "valid" if dry_run else "published"
    click.echo(f"{published} {verb}, {failed} failed", err=failed > 0)
    if failed:
        sys.exit(1)
