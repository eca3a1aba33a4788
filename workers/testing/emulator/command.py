"""``reservations emulator``: run the TaskRouter Reservation emulator in the foreground."""

from __future__ import annotations

import logging

import click

from workers.cli.options import env_option
from workers.errors import ConfigurationError
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN, EmulatorSettings
from workers.testing.emulator.store import DEFAULT_LOG_SIZE

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


@click.command()
@env_option(
    "--host",
    envvar="EMULATOR_HOST",
    default="127.0.0.1",
    help="Address to listen on. The admin API has no auth: keep it on loopback.",
)
@env_option(
    "--port",
    envvar="EMULATOR_PORT",
    default=8099,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@env_option(
    "--account-sid",
    envvar="TWILIO_ACCOUNT_SID",
    default=EMULATOR_ACCOUNT_SID,
    help="The account SID clients authenticate with (basic-auth username).",
)
@env_option(
    "--auth-token",
    envvar="TWILIO_AUTH_TOKEN",
    default=EMULATOR_AUTH_TOKEN,
    help="The auth token clients authenticate with (basic-auth password).",
)
@env_option(
    "--api-key",
    envvar="TWILIO_API_KEY",
    default=None,
    help="Also accept this API key SID as the basic-auth username...",
)
@env_option(
    "--api-secret",
    envvar="TWILIO_API_SECRET",
    default=None,
    help="...with this API key secret as the password.",
)
@env_option(
    "--strict-headers/--no-strict-headers",
    envvar="EMULATOR_STRICT_HEADERS",
    default=False,
    help="Send ETag headers exactly as Twilio's OpenAPI spec declares them (ETag, Etag, or none "
    "on worker-scoped fetch and update) instead of ETag on every reservation response.",
)
@env_option(
    "--access-log/--no-access-log",
    envvar="EMULATOR_ACCESS_LOG",
    default=False,
    help="Log every request (slows the emulator down).",
)
@env_option(
    "--log-size",
    envvar="EMULATOR_LOG_SIZE",
    default=DEFAULT_LOG_SIZE,
    type=click.IntRange(1),
    help="How many transitions the log keeps.",
)
@env_option(
    "--concurrency-limit",
    envvar="EMULATOR_CONCURRENCY_LIMIT",
    default=None,
    type=click.IntRange(1),
    help="Refuse requests beyond this many in flight with 429 and Twilio error 20429, as Twilio does"
    " past an account's concurrency limit (default: no limit; PUT /_emulator/concurrency changes it).",
)
@env_option(
    "--concurrency-retry-after",
    envvar="EMULATOR_CONCURRENCY_RETRY_AFTER",
    default=None,
    type=click.IntRange(0),
    help="Send this Retry-After (seconds) with those 429s (default: none, as Twilio mostly does).",
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
    concurrency_limit: int | None,
    concurrency_retry_after: int | None,
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
            concurrency_limit=concurrency_limit,
            concurrency_retry_after=concurrency_retry_after,
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
