"""Options several commands share, declared once: the same names, environment fallbacks and
defaults everywhere, with each command's own help text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from workers.config import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL

F = TypeVar("F", bound=Callable[..., Any])


def env_option(*declarations: str, envvar: str | list[str], **attributes: Any) -> Callable[[F], F]:
    """``click.option`` with an environment fallback, shown in ``--help`` with the default (if any)."""
    attributes.setdefault("show_default", attributes.get("default") is not None)
    return click.option(*declarations, envvar=envvar, show_envvar=True, **attributes)


def database_url_option(help: str, *, migrations: bool = False) -> Callable[[F], F]:
    """``--database-url`` (DATABASE_URL; LEDGER_MIGRATION_URL first where the owner role is needed)."""
    envvar: str | list[str] = ["LEDGER_MIGRATION_URL", "DATABASE_URL"] if migrations else "DATABASE_URL"
    return env_option("--database-url", envvar=envvar, default=DEFAULT_DATABASE_URL, help=help)


def broker_url_option(help: str) -> Callable[[F], F]:
    """``--broker-url`` (CELERY_BROKER_URL)."""
    return env_option("--broker-url", envvar="CELERY_BROKER_URL", default=DEFAULT_BROKER_URL, help=help)
