"""``reservations audit-api``: serve the read-only audit HTTP API with uvicorn."""

from __future__ import annotations

import ipaddress
import sys

import click

from workers.cli.options import database_url_option, env_option
from workers.config import Settings

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("audit-api")
@env_option("--host", envvar="AUDIT_API_HOST", default="127.0.0.1")
@env_option(
    "--port",
    envvar="AUDIT_API_PORT",
    type=click.IntRange(0, 65535),
    default=8080,
)
@database_url_option("The ledger; every connection runs as reservations_reader (SELECT only).")
@env_option(
    "--insecure-local",
    is_flag=True,
    envvar="AUDIT_API_INSECURE_LOCAL",
    help="Serve without a token (loopback addresses only). Never in production.",
)
@env_option(
    "--pool-max",
    type=click.IntRange(1),
    envvar="AUDIT_API_POOL_MAX",
    default=10,
    help="Database connections at most.",
)
def audit_api(host: str, port: int, database_url: str, insecure_local: bool, pool_max: int) -> None:
    """Serve the read-only audit HTTP API (OpenAPI document at /openapi.json, docs at /docs).

    Every /v1 request needs `Authorization: Bearer <AUDIT_API_TOKEN>` (env AUDIT_API_TOKEN; it is
    never taken on the command line). Without a token the command refuses to start, unless
    --insecure-local is given, and then only on a loopback address. /healthz and /readyz need no
    token.
    """
    import uvicorn

    from workers.audit.api import AuditApiConfig, create_app
    from workers.errors import ConfigurationError
    from workers.logs import setup_process

    settings = Settings.from_env()
    setup_process(settings.log_format, settings.log_level)
    token = settings.audit_api_token
    if token is None and insecure_local and not is_loopback(host):
        click.echo(f"error: --insecure-local serves only on a loopback address, not {host}", err=True)
        sys.exit(2)
    try:
        app = create_app(
            AuditApiConfig(database_url, token, insecure_local=insecure_local, pool_max=pool_max)
        )
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if token is None:
        click.echo("warning: serving the audit API WITHOUT authentication (--insecure-local)", err=True)
    # log_config=None: uvicorn's loggers (access lines included) go through setup_process's handler.
    uvicorn.run(
        app, host=host, port=port, log_config=None, log_level="info", proxy_headers=False, server_header=False
    )
