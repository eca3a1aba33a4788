"""Fixtures shared by every test package: real PostgreSQL databases and a private RabbitMQ vhost,
and the test tiers.

A template database is migrated once per session; each module gets a ``CREATE DATABASE ...
TEMPLATE`` clone of it. The whole session runs next to a deliberately busy cluster
(tests/support/busy.py). Services that do not answer make their tests skip locally and fail
under ``CI=true``.

Every test is in exactly one tier, selectable with ``-m``; ``pytest_collection_modifyitems``
below decides it from the fixtures the test requests (directly or through other fixtures), so a
new test is tiered by what it uses, not by remembering a mark:

- ``acceptance``: real worker processes or the real CLI as a subprocess against the services:
  it requests ``worker`` or ``flower``, or says ``@pytest.mark.acceptance`` (the tests that start
  a ``WorkerProcess`` or a command themselves; the only marks written by hand);
- ``integration``: real PostgreSQL, RabbitMQ or the emulator over HTTP: it requests one of
  ``SERVICE_FIXTURES``;
- ``unit``: everything else: no services, seconds in all (``make test-unit``).

Check that ``unit`` needs no service with ``make test-unit-offline``: it points the services at
dead ports under ``CI=true``, where a service that does not answer fails its test instead of
skipping it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.busy import BusyCluster, busy_cluster
from tests.support.services import (
    POSTGRES_ADMIN_URL,
    clone,
    drop_database,
    migrated_template,
    postgres_problem,
    rabbitmq_problem,
    rabbitmq_vhost,
    unavailable,
)
from workers.testing import scale

pytest_plugins = ["tests.support.e2e"]

TIERS = ("acceptance", "integration", "unit")
# Fixtures that start real worker processes (tests/support/e2e.py, tests/ops/test_flower.py).
ACCEPTANCE_FIXTURES = frozenset({"worker", "flower"})
# Fixtures that reach a real service: PostgreSQL, RabbitMQ, an emulator over HTTP.
SERVICE_FIXTURES = frozenset(
    {"admin_url", "template_url", "db_url", "fresh_db_url", "broker_url", "emulator", "strict_emulator"}
)


def tier(item: pytest.Item) -> str:
    """The one tier of a test: the highest its fixtures or its own mark put it in."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("acceptance") is not None or fixtures & ACCEPTANCE_FIXTURES:
        return "acceptance"
    if item.get_closest_marker("integration") is not None or fixtures & SERVICE_FIXTURES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = tier(item)
        if item.get_closest_marker(name) is None:
            item.add_marker(name)


@pytest.fixture(scope="session")
def admin_url() -> str:
    problem = postgres_problem(POSTGRES_ADMIN_URL)
    if problem is not None:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {problem}")
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session", autouse=True)
def busy() -> Iterator[BusyCluster | None]:
    """The whole session runs next to a foreign idle transaction holding an xid and a foreign
    writer (tests/support/busy.py): ledger readers must not wait for either."""
    if postgres_problem(POSTGRES_ADMIN_URL) is not None:
        yield None
        return
    with busy_cluster(POSTGRES_ADMIN_URL) as running:
        yield running


@pytest.fixture(scope="session")
def template_url(admin_url: str) -> Iterator[str]:
    url = migrated_template(admin_url)
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def db_url(admin_url: str, template_url: str) -> Iterator[str]:
    url = clone(admin_url, template_url)
    yield url
    drop_database(url)


@pytest.fixture
def fresh_db_url(admin_url: str, template_url: str) -> Iterator[str]:
    """A database of the test's own, for tests that tamper with it."""
    url = clone(admin_url, template_url)
    yield url
    drop_database(url)


SCALE_ROWS = 4000


@pytest.fixture
def ledger_url(fresh_db_url: str) -> str:
    """A ledger of about SCALE_ROWS rows (whole reservations) spread over the last three months
    (every chain spans them all), loaded by the scale loader: its indexes grown by inserts, as the
    workers grow them. Its first month holds at least three days of rows, whatever the date."""
    end = datetime.now(UTC) - timedelta(minutes=1)
    start = end - timedelta(days=90)
    if (start + timedelta(days=3)).month != start.month:
        start -= timedelta(days=3)
    shape = scale.plan(fresh_db_url, SCALE_ROWS, 0, start, end)
    scale.load(fresh_db_url, shape, 0, shape.top, jobs=1)
    return fresh_db_url


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    problem = rabbitmq_problem()
    if problem is not None:
        unavailable(problem)
    with rabbitmq_vhost() as url:
        yield url
