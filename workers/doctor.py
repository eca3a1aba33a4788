"""The checks of ``reservations doctor``, which a starting worker runs too before it reports ready.

Each check answers in one line (:class:`workers.health.Check`) and never raises: configuration,
the ledger (reachable, its role, its migration level), RabbitMQ (virtual host, credentials, the
exchanges and queues of :mod:`workers.broker.topology` with our arguments), TaskRouter (one
authenticated read through the twilio SDK), the PII key, and the metrics and Flower ports; and,
for ``doctor`` only, the ledger's monthly upkeep (partitions made ahead, none of the DEFAULT
partition's rows, the months that are over compacted).
"""

from __future__ import annotations

import errno
import socket
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from workers.broker.reach import topology_problems
from workers.config import Settings
from workers.errors import ReservationsError, TaskRouterError, unreachable
from workers.health import FAIL, OK, WARN, Check
from workers.ledger import archive, migrations, partitions
from workers.ledger.connector import connect, reach, where
from workers.ledger.models import Role
from workers.metrics import parse_address
from workers.taskrouter.gateway import TaskRouterGateway

# The longest any one check waits for a service; for a local port's answer.
TIMEOUT = 5.0
PORT_TIMEOUT = 2.0


def guarded(name: str, check: Callable[[Settings], Check], settings: Settings) -> Check:
    """``check``, with any error turned into its failure (a doctor does not crash on what it finds)."""
    try:
        return check(settings)
    except ReservationsError as exc:
        return Check(name, FAIL, str(exc))
    except Exception as exc:  # an unforeseen driver error is still one line, not a traceback
        return Check(name, FAIL, f"{type(exc).__name__}: {exc}")


def configuration(environ: Mapping[str, str] | None = None) -> tuple[Check, Settings | None]:
    try:
        settings = Settings.from_env(environ)
    except ReservationsError as exc:
        return Check("configuration", FAIL, str(exc)), None
    return Check("configuration", OK, "every variable parses"), settings


def ledger(settings: Settings) -> Check:
    """Reachable, usable as reservations_writer, and migrated to this release's level."""
    reach(settings.database_url, TIMEOUT)
    with connect(settings.database_url, Role.WRITER, connect_timeout=round(TIMEOUT)) as conn:
        known = migrations.known_migrations()
        todo = migrations.pending(known, migrations.applied_migrations(conn))
    at = f"{where(settings.database_url)}, as {Role.WRITER.value}"
    if todo:
        return Check(
            "ledger",
            FAIL,
            f"{at}: {len(todo)} of {len(known)} migrations pending ({todo[0]} first):"
            " run `reservations migrate`",
        )
    return Check("ledger", OK, f"{at}, migration {known[-1]} (all {len(known)} applied)")


def upkeep(settings: Settings) -> Check:
    """The ledger's monthly upkeep, as ops/RUNBOOK.md has cron do it: next month's partition made
    (else its rows land in the DEFAULT partition for good), the DEFAULT partition empty, and the
    months that are over compacted. A warning at most: nothing is lost meanwhile."""
    with connect(settings.database_url, Role.WRITER, connect_timeout=round(TIMEOUT)) as conn:
        listed = partitions.list_partitions(conn)
    month = archive.bounds(datetime.now(UTC).date().replace(day=1))
    this_month, next_month = month["start"], month["end"]
    ranges = [(p.lower, p.upper, p) for p in listed if p.lower is not None and p.upper is not None]
    problems = []
    if not any(lower <= next_month < upper for lower, upper, _p in ranges):
        problems.append(
            "no partition for next month yet: run `reservations ledger partitions` (as the owner:"
            " LEDGER_MIGRATION_URL)"
        )
    if any(p.has_rows for p in listed if p.lower is None):
        problems.append("rows in ledger.events_default (a month had no partition; ops/LEDGER.md, Partitions)")
    over = [p for _lower, upper, p in ranges if upper <= this_month and p.has_rows and not p.compacted]
    if over:
        problems.append(
            f"{len(over)} month(s) over and not compacted: run `reservations ledger compact` (as the owner)"
        )
    if problems:
        return Check("upkeep", WARN, "; ".join(problems))
    last = max((lower for lower, _upper, _p in ranges), default=next_month).astimezone(UTC)
    return Check("upkeep", OK, f"partitions made up to {last:%Y-%m}, every month that is over compacted")


def broker(settings: Settings) -> Check:
    problems = topology_problems(settings.broker_url, TIMEOUT)
    if problems:
        missing = any(p.endswith(" missing") for p in problems)
        hint = " (a worker declares them when it starts)" if missing else ""
        return Check("broker", FAIL, "; ".join(problems) + hint)
    return Check("broker", OK, "the virtual host, its exchanges and queues are as declared")


def taskrouter(settings: Settings) -> Check:
    """One authenticated read (``TaskRouterGateway.authenticate``)."""
    gateway = TaskRouterGateway.from_settings(settings, timeout=TIMEOUT)
    account = settings.twilio_credentials().account_sid
    try:
        gateway.authenticate()
    except TaskRouterError as exc:
        if exc.status in (401, 403):
            return Check(
                "taskrouter",
                FAIL,
                f"{settings.taskrouter_base_url} refused the credentials of {account}"
                f" (HTTP {exc.status}): check TWILIO_* ({exc})",
            )
        reason = f"HTTP {exc.status}: {exc}" if exc.status else str(exc)
        return Check("taskrouter", FAIL, unreachable("TaskRouter", settings.taskrouter_base_url, reason))
    return Check("taskrouter", OK, f"{settings.taskrouter_base_url} accepts the credentials of {account}")


def pii_key(settings: Settings) -> Check:
    if not settings.ledger_pii_key:
        return Check(
            "pii_key", WARN, "LEDGER_PII_KEY is unset: PII is hashed with the public development key"
        )
    if len(settings.ledger_pii_key) < 16:
        return Check("pii_key", WARN, "LEDGER_PII_KEY is shorter than 16 characters: guessable")
    return Check("pii_key", OK, "LEDGER_PII_KEY is set")


def port(name: str, address: str, probe_path: str) -> Check:
    """``address`` is free to listen on, or already served by one of ours (it answers ``probe_path``)."""
    host, number = parse_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, number))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return Check(name, FAIL, f"cannot listen on {host}:{number}: {exc.strerror}")
        else:
            return Check(name, OK, f"{host}:{number} is free")
    url = f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{number}{probe_path}"  # noqa: S104
    try:
        with urllib.request.urlopen(url, timeout=PORT_TIMEOUT):
            return Check(name, OK, f"{host}:{number} is served already ({probe_path} answers)")
    except OSError:
        return Check(name, FAIL, f"{host}:{number} is taken by something that does not answer {probe_path}")


def ports(settings: Settings) -> list[Check]:
    found = [port("flower_port", settings.flower_address, "/healthcheck")]
    if settings.worker_metrics_port:
        found.insert(0, port("metrics_port", settings.worker_metrics_port, "/healthz"))
    return found


def services(settings: Settings) -> list[Check]:
    """What a worker needs before it may report ready: the ledger, RabbitMQ and TaskRouter."""
    return [
        guarded("ledger", ledger, settings),
        guarded("broker", broker, settings),
        guarded("taskrouter", taskrouter, settings),
    ]


def doctor(environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in the order an operator fixes things; after a bad configuration, only that."""
    config, settings = configuration(environ)
    if settings is None:
        return [config]
    checked = services(settings)
    return [
        config,
        *checked,
        *([] if checked[0].failed else [guarded("upkeep", upkeep, settings)]),
        guarded("pii_key", pii_key, settings),
        *ports(settings),
    ]
