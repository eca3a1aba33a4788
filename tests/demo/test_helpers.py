"""Small pieces of the demo runner."""

from __future__ import annotations

from workers.testing.demo.services import shown_url, worker_env


def test_the_kept_database_is_shown_without_its_password() -> None:
    shown = shown_url("postgresql://app:s3cret@db.internal:5432/reservations", "reservations_demo")
    assert shown == "postgresql://app:***@db.internal:5432/reservations_demo"


def test_the_demo_worker_retries_within_seconds() -> None:
    env = worker_env("amqp://guest:guest@127.0.0.1:5672/demo", "postgresql://x/demo", "http://127.0.0.1:1")
    assert float(env["RETRY_BASE_DELAY"]) <= 1
    assert int(env["RETRY_MAX_RETRIES"]) <= 4
    assert env["LEDGER_PII_KEY"]
