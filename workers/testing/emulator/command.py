"""``reservations emulator``: run the TaskRouter Reservation emulator in the foreground."""

from __future__ import annotations

import logging

import click

from workers.cli.options import env_option
from workers.errors import ConfigurationError
from workers.testing.emulator.settings import (
    EMULATOR_ACCOUNT_SID,
    EMULATOR_AUTH_TOKEN,
    EmulatorSettings,
    parse_events_filter,
)
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
    help="How many transitions (and events, and deliveries) the logs keep.",
)
@env_option(
    "--event-callback-url",
    envvar="EMULATOR_EVENT_CALLBACK_URL",
    default=None,
    help="Every workspace's EventCallbackUrl: where signed Event Callbacks are POSTed (Twilio's "
    "connection overrides such as #rc=3&rp=all in the fragment apply). Each workspace can change "
    "its own through the API or /_emulator/workspaces/{sid}.",
)
@env_option(
    "--events-filter",
    envvar="EMULATOR_EVENTS_FILTER",
    default=None,
    help="Every workspace's EventsFilter: the comma-separated event types to call back for (default: all).",
)
@env_option(
    "--event-streams-url",
    envvar="EMULATOR_EVENT_STREAMS_URL",
    default=None,
    help="An Event Streams webhook sink: CloudEvents JSON arrays, signed with bodySHA256.",
)
@env_option(
    "--reservation-timeout",
    envvar="EMULATOR_RESERVATION_TIMEOUT",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Time a reservation out (reservation.timeout) when it is still pending this many seconds "
    "after it was created (default: never, unless /_emulator/ asks).",
)
@env_option(
    "--callback-concurrency",
    envvar="EMULATOR_CALLBACK_CONCURRENCY",
    default=8,
    type=click.IntRange(1),
    help="Event deliveries in flight at once (order across them is not guaranteed, as with Twilio).",
)
@env_option(
    "--callback-queue-size",
    envvar="EMULATOR_CALLBACK_QUEUE_SIZE",
    default=10_000,
    type=click.IntRange(1),
    help="Event deliveries waiting at most; beyond it a delivery is logged 'overflow' and not sent.",
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
    event_callback_url: str | None,
    events_filter: str | None,
    event_streams_url: str | None,
    reservation_timeout: float | None,
    callback_concurrency: int,
    callback_queue_size: int,
    concurrency_limit: int | None,
    concurrency_retry_after: int | None,
) -> None:
    """Run a local TaskRouter Reservation API (for tests, demos and benchmarks).

    Twilio's routes live under /v1/Workspaces/...; the admin API (seed reservations, change them
    behind the clients' backs, read the transition log and counters, inject faults) lives under
    /_emulator/ and is meant for loopback use only. Every reservation change is an event: in the
    Events resource, and sent as a signed Event Callback (and to an Event Streams sink) when a
    URL is set (ops/EMULATOR.md).
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
            event_callback_url=event_callback_url,
            events_filter=parse_events_filter(events_filter),
            event_streams_url=event_streams_url,
            reservation_timeout=reservation_timeout,
            callback_concurrency=callback_concurrency,
            callback_queue_size=callback_queue_size,
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
