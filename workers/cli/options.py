"""Options several commands share, declared once: the same names, environment fallbacks and
defaults everywhere, with each command's own help text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from workers.config import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL

F = TypeVar("F", bound=Callable[..., Any])


def database_url_option(help: str, *, migrations: bool = False) -> Callable[[F], F]:
    """``--database-url`` (DATABASE_URL; LEDGER_MIGRATION_URL first where the owner role is needed)."""
    envvar: str | list[str] = ["LEDGER_MIGRATION_URL", "DATABASE_URL"] if migrations else "DATABASE_URL"
    return click.option(
        "--database-url",
        envvar=envvar,
        show_envvar=True,
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        help=help,
    )


def broker_url_option(help: str) -> Callable[[F], F]:
    """``--broker-url`` (CELERY_BROKER_URL)."""
    return click.option(
        "--broker-url",
        envvar="CELERY_BROKER_URL",
        show_envvar=True,
        default=DEFAULT_BROKER_URL,
        show_default=True,
        help=help,
    )
