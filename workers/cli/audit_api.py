"""``reservations audit-api``: serve the read-only audit HTTP API with uvicorn."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import click

from workers.audit.auth import Auditor, parse_auditors
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
    "--secure-cookie",
    is_flag=True,
    envvar="AUDIT_API_SECURE_COOKIE",
    help="Mark the console's session cookie Secure even over plain HTTP (TLS ends at a proxy in front).",
)
@env_option(
    "--pool-max",
    type=click.IntRange(1),
    envvar="AUDIT_API_POOL_MAX",
    default=10,
    help="Database connections at most.",
)
def audit_api(
    host: str, port: int, database_url: str, insecure_local: bool, secure_cookie: bool, pool_max: int
) -> None:
    """Serve the read-only audit HTTP API (OpenAPI document at /openapi.json, docs at /docs) and
    the audit console for people at /ui/.

    Every /v1 request needs `Authorization: Bearer <token>`; the console asks for the token once in
    a login form and keeps a session cookie. Tokens come from the environment, never the command
    line: AUDIT_API_TOKEN (one token), AUDIT_API_TOKENS ("alice:<token>,bob:<token>": named
    auditors, each request logged with the name) and AUDIT_API_TOKENS_FILE (a file of name:token
    lines). Without any the command refuses to start, unless --insecure-local is given, and then
    only on a loopback address. /healthz and /readyz need no token. The overview's verify result
    comes from a background `ledger verify` every AUDIT_VERIFY_INTERVAL seconds (default 3600;
    0: never).
    """
    from workers.audit.api import AuditApiConfig, create_app
    from workers.cli.serving import serve
    from workers.errors import ConfigurationError

    settings = Settings.from_env()
    try:
        named = named_auditors(settings)
    except (ConfigurationError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    token = settings.audit_api_token
    if token is None and not named and insecure_local and not is_loopback(host):
        click.echo(f"error: --insecure-local serves only on a loopback address, not {host}", err=True)
        sys.exit(2)
    try:
        app = create_app(
            AuditApiConfig(
                database_url,
                token,
                insecure_local=insecure_local,
                pool_max=pool_max,
                auditors=named,
                secure_cookie=secure_cookie,
                verify_interval=settings.audit_verify_interval,
            )
        )
    except ConfigurationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if token is None and not named:
        click.echo("warning: serving the audit API WITHOUT authentication (--insecure-local)", err=True)
    serve(app, host, port, settings)


def named_auditors(settings: Settings) -> tuple[Auditor, ...]:
    """AUDIT_API_TOKENS, then the lines of AUDIT_API_TOKENS_FILE."""
    found = parse_auditors(settings.audit_api_tokens or "", origin="AUDIT_API_TOKENS")
    if settings.audit_api_tokens_file:
        text = Path(settings.audit_api_tokens_file).read_text(encoding="utf-8")
        found += parse_auditors(text, origin=settings.audit_api_tokens_file)
    return found
