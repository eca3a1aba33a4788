"""``reservations events-api``: receive TaskRouter's Event Callbacks and Event Streams deliveries."""

from __future__ import annotations

import sys

import click

from workers.cli.options import database_url_option, env_option
from workers.config import Settings
from workers.config import streams_auth as parse_streams_auth


@click.command("events-api")
@env_option("--host", envvar="EVENTS_API_HOST", default="127.0.0.1", help="Address to listen on.")
@env_option(
    "--port", envvar="EVENTS_API_PORT", type=click.IntRange(0, 65535), default=8090, help="Port to listen on."
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
def events_api(host: str, port: int, database_url: str, public_url: str | None, streams_auth: str) -> None:
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
    from workers.events.api import EventsApiConfig, create_app

    try:
        settings = Settings.from_env()
        if public_url is None:
            raise ConfigurationError(
                "set EVENTS_PUBLIC_URL (or --public-url): signatures are checked against it"
            )
        app = create_app(
            EventsApiConfig(
                database_url,
                public_url,
                auth_token=settings.events_auth_token,
                streams_auth=parse_streams_auth(streams_auth),
                basic_auth=settings.events_basic_auth,
                batch_max=settings.events_batch_max,
                writers=settings.events_writers,
            )
        )
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    serve(app, host, port, settings)
