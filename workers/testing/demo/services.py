"""The services the demo needs: PostgreSQL and RabbitMQ must answer; a private vhost; the worker's env."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from workers.errors import ReservationsError
from workers.ledger.connector import with_database
from workers.testing.emulator.settings import emulator_env

DEMO_PII_KEY = "reservations-demo-pii-key"
# Short waits, so retries happen within seconds (Celery countdowns are whole seconds, at least 1).
WORKER_RETRY_ENV = {
    "RETRY_BASE_DELAY": "0.5",
    "RETRY_MAX_DELAY": "2",
    "RETRY_MAX_RETRIES": "4",
    "RETRY_CONFLICT_PAUSE": "0.005",
    "RETRY_IN_FLIGHT": "3",
}
START_POSTGRES = (
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    "   (or: docker compose up -d postgres)"
)
START_RABBITMQ = "rabbitmq-server -detached   (or: docker compose up -d rabbitmq)"

Say = Callable[[str], None]


class ServiceUnavailable(ReservationsError):
    """PostgreSQL or RabbitMQ does not answer; the message says how to start it."""


def check_services(database_url: str, broker_url: str) -> None:
    """Raise :class:`ServiceUnavailable`, saying what to start, unless both services answer."""
    import psycopg

    problems = []
    try:
        with psycopg.connect(with_database(database_url, "postgres"), connect_timeout=3):
            pass
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(f"PostgreSQL cannot be reached ({first_line}).\n  Start it: {START_POSTGRES}")
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        problems.append(f"RabbitMQ does not answer on {host}:{port} ({exc}).\n  Start it: {START_RABBITMQ}")
    if problems:
        raise ServiceUnavailable("\n".join(problems))


@contextmanager
def private_vhost(broker_url: str, say: Say) -> Iterator[str]:
    """A RabbitMQ vhost of the demo's own (deleted afterwards), when ``rabbitmqctl`` can make one.

    Otherwise the broker URL as given: the demo then shares its queues with whatever else uses it.
    """
    ctl = shutil.which("rabbitmqctl")
    parts = urlsplit(broker_url)
    vhost = f"reservations-demo-{uuid.uuid4().hex[:8]}"
    user = unquote(parts.username or "guest")
    try:
        if ctl is None:
            raise FileNotFoundError("rabbitmqctl is not on PATH")
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=30)  # noqa: S603
    except (OSError, subprocess.SubprocessError) as exc:
        shown = unquote(parts.path[1:]) or "/"
        say(f"broker: cannot make a private vhost ({exc}); using vhost {shown!r} as given")
        yield broker_url
        return
    try:
        subprocess.run(  # noqa: S603 - our own command line
            [ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True, timeout=30)  # noqa: S603


def shown_url(database_url: str, database: str) -> str:
    """``database_url`` pointed at ``database``, without its password, for showing."""
    if "://" not in database_url:
        return with_database(database_url, database)
    parts = urlsplit(database_url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


def where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or ''}".rstrip(":")


def worker_env(broker_url: str, database_url: str, emulator_url: str) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": database_url,
        "LEDGER_MIGRATION_URL": database_url,
        **emulator_env(emulator_url),
        "LEDGER_PII_KEY": DEMO_PII_KEY,
        "LEDGER_POOL_MAX": "16",
        **WORKER_RETRY_ENV,
    }
