"""Reach the real services, or skip (locally) / fail (under CI=true) when one is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

from workers.ledger.connector import drop_database, with_database
from workers.ledger.migrations import migrate

POSTGRES_ADMIN_URL = os.environ.get("LEDGER_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", int(os.environ.get("RABBITMQ_TEST_PORT", "5672"))


def unavailable(message: str) -> None:
    """Skip the test locally; under CI a missing service is a failure, never a silent skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def postgres_problem(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc)


def rabbitmq_problem() -> str | None:
    try:
        with socket.create_connection((RABBITMQ_HOST, RABBITMQ_PORT), timeout=3):
            return None
    except OSError as exc:
        return f"RabbitMQ does not answer on {RABBITMQ_HOST}:{RABBITMQ_PORT}: {exc}"


def scratch_name(kind: str) -> str:
    return f"ledger_{kind}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def migrated_template(admin_url: str) -> str:
    url = with_database(admin_url, scratch_name("tmpl"))
    migrate(url)
    return url


def clone(admin_url: str, template_url: str) -> str:
    """A new database copied from the migrated template (fast: no migrations to run)."""
    name = scratch_name("test")
    template = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(str(template))
            )
        )
    return with_database(admin_url, name)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A broker URL on a virtual host of its own, deleted afterwards, so runs never share queues.

    Needs ``rabbitmqctl`` (the broker runs on this machine); without it, the default vhost.
    """
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
        return
    vhost = f"reservations-test-{uuid.uuid4().hex[:12]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True)


__all__ = [
    "POSTGRES_ADMIN_URL",
    "clone",
    "drop_database",
    "migrated_template",
    "postgres_problem",
    "rabbitmq_problem",
    "rabbitmq_vhost",
    "unavailable",
]
