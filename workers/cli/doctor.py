"""``reservations doctor``: is this machine's configuration ready to run the workers?"""

from __future__ import annotations

import json
import sys

import click

from workers.doctor import doctor as run_checks
from workers.health import FAIL


@click.command()
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="One line per check, or one JSON object per line (name, status, detail).",
)
def doctor(output_format: str) -> None:
    """Check the configuration, the ledger (reachable, role, migrations), RabbitMQ (virtual host,
    exchanges, queues and their arguments), TaskRouter (one authenticated read), the PII key and
    the metrics and Flower ports, from the same environment as the workers.

    One line per check: ok, warn or fail. Exit status 0 when nothing failed, 1 otherwise. Workers
    run the ledger, RabbitMQ and TaskRouter checks themselves and report ready only once they pass.
    """
    checks = run_checks()
    for check in checks:
        if output_format == "json":
            click.echo(json.dumps(check.as_dict()))
        else:
            click.echo(check.line())
    sys.exit(1 if any(c.status == FAIL for c in checks) else 0)
