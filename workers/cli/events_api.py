"""``reservations events-api``: receive TaskRouter's Event Callbacks and Event Streams deliveries."""

from __future__ import annotations

import sys
import tempfile
from typing import TYPE_CHECKING

import click

from workers.cli.options import database_url_option, env_option
from workers.config import Settings, export
from workers.config import streams_auth as parse_streams_auth

if TYPE_CHECKING:
    from workers.events.api import EventsApiConfig, EventsApp

# What ``--workers`` processes build their app from: uvicorn spawns them, and they read the
# command's resolved options from the environment the command leaves them.
FACTORY = "workers.cli.events_api:app_from_env"


def _config(
    settings: Settings, database_url: str, public_url: str | None, streams_auth: tuple[str, ...]
) -> EventsApiConfig:
    from workers.errors import ConfigurationError
    from workers.events.api import EventsApiConfig

    if public_url is None:
        raise ConfigurationError("set EVENTS_PUBLIC_URL (or --public-url): signatures are checked against it")
    return EventsApiConfig(
        database_url,
        public_url,
        auth_token=settings.events_auth_token,
        streams_auth=streams_auth,
        basic_auth=settings.events_basic_auth,
        batch_max=settings.events_batch_max,
        writers=settings.events_writers,
        metrics_dir=settings.prometheus_multiproc_dir,
    )


def app_from_env() -> EventsApp:
    """One ``--workers`` process's app, from the options its parent checked and exported."""
    from workers.events.api import create_app
    from workers.logs import setup_process

    settings = Settings.from_env()
    setup_process(settings.log_format, settings.log_level)
    return create_app(
        _config(settings, settings.database_url, settings.events_public_url, settings.events_streams_auth)
    )


@click.command("events-api")
@env_option("--host", envvar="EVENTS_API_HOST", default="127.0.0.1", help="Address to listen on.")
@env_option(
    "--port", envvar="EVENTS_API_PORT", type=click.IntRange(0, 65535), default=8090, help="Port to listen on."
)
@env_option(
    "--workers",
    envvar="EVENTS_API_WORKERS",
    type=click.IntRange(1, 64),
    default=1,
    help="Server processes sharing the port (uvicorn's workers), each with its own group commit and"
    " EVENTS_WRITERS+1 ledger connections. One took 1,000 callbacks/s on 2 cores shared with the"
    " database; add processes where there are cores the database does not need (ops/RUNBOOK.md,"
    ' "TaskRouter events").',
)
@database_url_option("The ledger; the API writes as reservations_writer, through the ledger's functions.")
@env_option(
    "--public-url",
    envvar="EVENTS_PUBLIC_URL",
    default=None,
    help="The public base URL TaskRouter posts to, e.g. https://events.example.com (signatures cover"
    " it: we sit behind proxies). The callback URL is <public-url>/taskrouter/events, the Event"
    " Streams sink <public-url>/taskrouter/event-streams.",
)
@env_option(
    "--streams-auth",
    envvar="EVENTS_STREAMS_AUTH",
    default="signature",
    help="What an Event Streams delivery must pass: signature (X-Twilio-Signature with bodySHA256),"
    " basic (EVENTS_BASIC_AUTH=user:password) or signature,basic.",
)
def events_api(
    host: str, port: int, workers: int, database_url: str, public_url: str | None, streams_auth: str
) -> None:
    """Receive TaskRouter's events and record each reservation change in the ledger (source=event).

    \b
    POST /taskrouter/events         a Workspace's Event Callback (form, X-Twilio-Signature)
    POST /taskrouter/event-streams  an Event Streams webhook sink (CloudEvents JSON)
    GET  /healthz /readyz /metrics  liveness, readiness (the ledger answers), Prometheus

    Signatures are checked with EVENTS_AUTH_TOKEN (else TWILIO_AUTH_TOKEN), never taken on the
    command line; a delivery that fails them gets 403 and nothing is recorded. A delivery is
    answered 204 once its events are committed. Point a Workspace's EventCallbackUrl at
    <public-url>/taskrouter/events (ops/RUNBOOK.md, "TaskRouter events").
    """
    from workers.cli.serving import serve
    from workers.errors import ConfigurationError
    from workers.events.api import create_app

    try:
        settings = Settings.from_env()
        config = _config(settings, database_url, public_url, parse_streams_auth(streams_auth))
        config.checked_token()
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if workers == 1:
        serve(create_app(config), host, port, settings)
        return
    # The processes read what was checked here; /metrics adds up every process's numbers.
    export(
        {
            "DATABASE_URL": database_url,
            "EVENTS_PUBLIC_URL": config.public_url,
            "EVENTS_STREAMS_AUTH": streams_auth,
        }
    )
    if settings.prometheus_multiproc_dir:
        serve(FACTORY, host, port, settings, workers=workers)
        return
    with tempfile.TemporaryDirectory(prefix="events-api-metrics-") as private:
        export({"PROMETHEUS_MULTIPROC_DIR": private})
        serve(FACTORY, host, port, settings, workers=workers)
