"""``reservations emulator``: run the TaskRouter Reservation emulator in the foreground."""

from __future__ import annotations

import logging

import click

from workers.errors import ConfigurationError
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN, EmulatorSettings
from workers.testing.emulator.store import DEFAULT_LOG_SIZE

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


@click.command()
@click.option(
    "--host",
    envvar="EMULATOR_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The admin API has no auth: keep it on loopback.",
)
@click.option(
    "--port",
    envvar="EMULATOR_PORT",
    show_envvar=True,
    default=8099,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--account-sid",
    envvar="TWILIO_ACCOUNT_SID",
    show_envvar=True,
    default=EMULATOR_ACCOUNT_SID,
    show_default=True,
    help="The account SID clients authenticate with (basic-auth username).",
)
@click.option(
    "--auth-token",
    envvar="TWILIO_AUTH_TOKEN",
    show_envvar=True,
    default=EMULATOR_AUTH_TOKEN,
    show_default=True,
    help="The auth token clients authenticate with (basic-auth password).",
)
@click.option(
    "--api-key",
    envvar="TWILIO_API_KEY",
    show_envvar=True,
    default=None,
    help="Also accept this API key SID as the basic-auth username...",
)
@click.option(
    "--api-secret",
    envvar="TWILIO_API_SECRET",
    show_envvar=True,
    default=None,
    help="...with this API key secret as the password.",
)
@click.option(
    "--strict-headers/--no-strict-headers",
    envvar="EMULATOR_STRICT_HEADERS",
    show_envvar=True,
    default=False,
    show_default=True,
    help="Send ETag headers exactly as Twilio's OpenAPI spec declares them (ETag, Etag, or none "
    "on worker-scoped fetch and update) instead of ETag on every reservation response.",
)
@click.option(
    "--access-log/--no-access-log",
    envvar="EMULATOR_ACCESS_LOG",
    show_envvar=True,
    default=False,
    show_default=True,
    help="Log every request (slows the emulator down).",
)
@click.option(
    "--log-size",
    envvar="EMULATOR_LOG_SIZE",
    show_envvar=True,
    default=DEFAULT_LOG_SIZE,
    show_default=True,
    type=click.IntRange(1),
    help="How many transitions the log keeps.",
)
def emulator(
    host: str,
    port: int,
    account_sid: str,
    auth_token: str,
    api_key: str | None,
    api_secret: str | None,
    strict_headers: bool,
    access_log: bool,
    log_size: int,
) -> None:
    """Run a local TaskRouter Reservation API (for tests, demos and benchmarks).

    Twilio's routes live under /v1/Workspaces/...; the admin API (seed reservations, change them
    behind the clients' backs, read the transition log and counters, inject faults) lives under
    /_emulator/ and is meant for loopback use only.
    """
    from workers.testing.emulator.server import serve

    try:
        settings = EmulatorSettings(
            account_sid=account_sid,
            auth_token=auth_token,
            api_key=api_key,
            api_secret=api_secret,
            strict_headers=strict_headers,
            access_log=access_log,
            log_size=log_size,
        )
    except ConfigurationError as error:
        raise click.UsageError(str(error)) from error
    if access_log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if host not in LOOPBACK_HOSTS:
        click.echo(f"warning: listening on {host}: the /_emulator/ admin API has no authentication", err=True)
    mode = "strict" if strict_headers else "default"

    def announce(url: str) -> None:
        click.echo(f"TaskRouter emulator listening on {url} (ETag headers: {mode})", nl=True)

    serve(settings, host, port, announce)
