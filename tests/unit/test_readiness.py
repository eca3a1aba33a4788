"""Readiness without services: retried checks gate ``on_ready``; once ready, ``/readyz`` checks
the ledger, the broker and the consumer live (here all on closed ports, so all fail)."""

from __future__ import annotations

import logging

import pytest

from workers.config import Settings
from workers.health import FAIL, OK, Check, ready_answer
from workers.readiness import Readiness
from workers.testing.emulator.process import free_port


def test_the_worker_becomes_ready_only_after_its_checks_pass_and_says_why_until_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    answers = iter([FAIL, FAIL, OK])
    readied: list[bool] = []

    def ledger(_: Settings) -> Check:
        return Check("ledger", next(answers), "what the ledger said")

    readiness = Readiness(
        Settings(), lambda: True, lambda: readied.append(True), [("ledger", ledger)], first_pause=0.001
    )
    assert readiness.probe()[0].failed  # before the first check: not ready
    with caplog.at_level(logging.INFO, logger="workers.readiness"):
        readiness.run()
    assert readied == [True]
    assert readiness.ready
    said = [r.getMessage() for r in caplog.records]
    assert said[:2] == [
        "not ready: ledger: what the ledger said (checking again in 0 s)",
        "not ready: ledger: what the ledger said (checking again in 0 s)",
    ]
    assert said[2] == "ready: ledger: what the ledger said"


def test_a_check_that_raises_is_a_failure_not_a_crash() -> None:
    def broken(_: Settings) -> Check:
        raise RuntimeError("driver bug")

    readiness = Readiness(Settings(), lambda: True, lambda: None, [("broker", broken)])
    readiness.stop()
    readiness.run()  # one round, then stopped
    assert not readiness.ready
    assert readiness.probe() == [Check("broker", FAIL, "RuntimeError: driver bug")]


def test_once_ready_readyz_checks_the_services_and_the_consumer_live() -> None:
    closed = free_port()
    settings = Settings(
        broker_url=f"amqp://guest:guest@127.0.0.1:{closed}//",
        database_url=f"postgresql://postgres@127.0.0.1:{closed}/reservations",
    )
    readiness = Readiness(settings, lambda: False, lambda: None, [("ok", lambda _: Check("ok", OK, "fine"))])
    readiness.run()
    found = {c.name: c for c in readiness.probe()}
    assert found["ledger"].detail.startswith(f"cannot reach the ledger's PostgreSQL at 127.0.0.1:{closed}")
    assert found["broker"].detail.startswith(f"cannot reach RabbitMQ at 127.0.0.1:{closed}")
    assert found["consuming"].failed
    status, body = ready_answer(found.values())
    assert status == 503
    assert body["status"] == "not_ready"
