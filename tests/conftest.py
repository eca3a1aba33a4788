"""Fixtures shared by every test package: real PostgreSQL databases and a private RabbitMQ vhost.

A template database is migrated once per session; each module gets a ``CREATE DATABASE ...
TEMPLATE`` clone of it. The whole session runs next to a deliberately busy cluster
(tests/support/busy.py). Services that do not answer make their tests skip locally and fail
under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Iterator

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

pytest_plugins = ["tests.support.e2e"]


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


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    problem = rabbitmq_problem()
    if problem is not None:
        unavailable(problem)
    with rabbitmq_vhost() as url:
        yield url
