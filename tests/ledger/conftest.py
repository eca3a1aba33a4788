"""Fixtures for the ledger's tests against a real PostgreSQL.

A template database is migrated once per session; each test module (or a test that tampers
with its ledger) gets its own ``CREATE DATABASE ... TEMPLATE`` clone, dropped afterwards. When
PostgreSQL does not answer, these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from workers.core.action import Action, ActionKind
from workers.core.sids import new_sid
from workers.ledger.connector import Connector, drop_database, with_database
from workers.ledger.migrations import migrate
from workers.ledger.models import Role
from workers.ledger.store import Ledger

ADMIN_URL = os.environ.get("LEDGER_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PII_KEY = "test-pii-key"


def _reachable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc)


@pytest.fixture(scope="session")
def admin_url() -> str:
    problem = _reachable(ADMIN_URL)
    if problem is not None:
        message = f"PostgreSQL is not reachable at {ADMIN_URL}: {problem}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return ADMIN_URL


def _scratch_name(kind: str) -> str:
    return f"ledger_{kind}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def template_url(admin_url: str) -> Iterator[str]:
    url = with_database(admin_url, _scratch_name("tmpl"))
    migrate(url)
    yield url
    drop_database(url)


def clone(admin_url: str, template_url: str) -> str:
    name = _scratch_name("test")
    template = psycopg.conninfo.conninfo_to_dict(template_url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(str(template))
            )
        )
    return with_database(admin_url, name)


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


def open_ledger(url: str, role: Role = Role.WRITER, max_size: int = 4) -> Ledger:
    connector = Connector(url, role, min_size=1, max_size=max_size)
    connector.open()
    return Ledger(connector, PII_KEY)


@pytest.fixture(scope="module")
def ledger(db_url: str) -> Iterator[Ledger]:
    with open_ledger(db_url) as opened:
        yield opened


@pytest.fixture
def fresh_ledger(fresh_db_url: str) -> Iterator[Ledger]:
    with open_ledger(fresh_db_url) as opened:
        yield opened


def make_action(**overrides: Any) -> Action:
    fields: dict[str, Any] = {
        "action_id": uuid.uuid4(),
        "action": ActionKind.ACCEPT,
        "workspace_sid": new_sid("WS"),
        "reservation_sid": new_sid("WR"),
        "task_sid": new_sid("WT"),
        "worker_sid": new_sid("WK"),
        "correlation_id": f"corr-{uuid.uuid4().hex[:8]}",
        "producer": "tests",
    }
    fields.update(overrides)
    return Action(**fields)


def superuser(url: str) -> psycopg.Connection[Any]:
    """A superuser connection that bypasses the ledger's role (for tampering and inspection)."""
    return psycopg.connect(url, autocommit=True)
