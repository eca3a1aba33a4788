"""Fixtures for the events API's tests: a real ledger (one database per module), the API's group
commit over it, and the API in process (``TestClient``) behind a public URL it never sees."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.audit.support import TestClient
from tests.ledger.conftest import open_reader, open_writer
from workers.events.api import EventsApiConfig, create_app
from workers.events.recording import GroupCommitter
from workers.ledger.models import LedgerRow
from workers.ledger.reader import LedgerReader
from workers.ledger.writer import PostgresLedgerWriter
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN

PUBLIC = "https://events.example.com"
TOKEN = EMULATOR_AUTH_TOKEN


@pytest.fixture(scope="module")
def writer(db_url: str) -> Iterator[PostgresLedgerWriter]:
    with open_writer(db_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def reader(db_url: str) -> Iterator[LedgerReader]:
    with open_reader(db_url) as opened:
        yield opened


@pytest.fixture(scope="module")
def committer(writer: PostgresLedgerWriter) -> Iterator[GroupCommitter]:
    group = GroupCommitter(writer, batch_max=50, threads=2)
    group.start()
    yield group
    group.stop()


def config(db_url: str, **overrides: object) -> EventsApiConfig:
    fields: dict[str, object] = {"public_url": PUBLIC, "auth_token": TOKEN, **overrides}
    return EventsApiConfig(db_url, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api(db_url: str, committer: GroupCommitter) -> Iterator[TestClient]:
    with TestClient(
        create_app(config(db_url), committer=committer), base_url="http://internal:8090"
    ) as client:
        yield client


def transitions(reader: LedgerReader, reservation_sid: str) -> list[LedgerRow]:
    return [row for row in reader.history(reservation_sid=reservation_sid) if row.kind == "transition"]
