"""The ``reservations`` command.

Each subcommand lives in its own module and is imported only when it runs, so ``--help`` is
fast and a broken optional dependency of one command cannot break the others. To add a
command, add a line to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from workers import __version__
from workers.errors import ReservationsError

# name -> "module:attribute" of a click command or group.
SUBCOMMANDS: dict[str, str] = {
    "emulator": "workers.testing.emulator.command:emulator",
    "demo": "workers.testing.demo.command:demo",
    "migrate": "workers.cli.ledger:migrate",
    "ledger": "workers.cli.ledger:ledger",
    "history": "workers.cli.history:history",
    "show": "workers.cli.history:show",
    "replay": "workers.cli.replay:replay",
    "audit-api": "workers.cli.audit_api:audit_api",
    "events-api": "workers.cli.events_api:events_api",
    "reconcile": "workers.cli.reconcile:reconcile",
    "enqueue": "workers.cli.enqueue:enqueue",
    "doctor": "workers.cli.doctor:doctor",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented pattern)."""

    def __init__(self, *args: object, lazy_subcommands: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_subcommands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; an error of ours it lets through (a bad setting, a service out of
        reach) is one line on stderr and exit status 2, never a traceback."""
        try:
            return super().invoke(ctx)
        except ReservationsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(
    cls=LazyGroup,
    lazy_subcommands=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="reservations")
def main() -> None:
    """Apply Twilio TaskRouter reservation actions reliably, and audit what happened.

    Every option can also be set from the environment variable shown beside it.
    """
