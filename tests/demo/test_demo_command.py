"""``reservations demo --short`` through the real CLI, against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.services import POSTGRES_ADMIN_URL, postgres_problem, rabbitmq_problem, unavailable
from workers.ledger.connector import drop_database, with_database
from workers.testing.emulator.process import free_port

COMMAND = [str(Path(sys.executable).with_name("reservations")), "demo"]


def run_demo(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, env=environ, timeout=timeout, check=False
    )


@pytest.mark.acceptance
@pytest.mark.slow
def test_the_short_demo_loses_nothing(tmp_path: Path) -> None:
    for problem in (postgres_problem(POSTGRES_ADMIN_URL), rabbitmq_problem()):
        if problem is not None:
            unavailable(problem)
    database = f"reservations_demo_test_{uuid.uuid4().hex[:8]}"
    summary_path = tmp_path / "summary.json"
    try:
        done = run_demo(
            "--short", "--summary-json", str(summary_path),
            env={"DATABASE_URL": POSTGRES_ADMIN_URL, "DEMO_DATABASE": database, "DEMO_SEED": "11"},
        )  # fmt: skip
    finally:
        drop_database(with_database(POSTGRES_ADMIN_URL, database))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    # Its own outcome table: every scripted outcome happened, nothing is missing.
    summary = json.loads(summary_path.read_text())
    assert summary["lost"] is False
    assert summary["errors"] == []
    assert summary["outcome_rows_per_action"] == {"1": summary["actions"]}
    assert "(none)" not in summary["outcomes"]
    assert summary["unexpected"] == []
    for outcome in (
        "applied",
        "already_applied",
        "invalid_transition",
        "dead_lettered",
        "failed",
        "rejected_input",
    ):
        assert summary["outcomes"].get(outcome, 0) >= 1, summary["outcomes"]
        assert any(line.startswith(f"│ {outcome} ") for line in output.splitlines()), output
    assert summary["conflicts"] >= 2  # the raced reservations met a 412
    assert summary["failed_attempts"].get("503", 0) >= 1
    assert summary["failed_attempts"].get("429", 0) >= 1
    assert summary["dead_letters"] == 4  # two refused messages, one exhausted, one failed
    checks = {check["name"]: check["ok"] for check in summary["checks"]}
    assert checks == {
        "every action has exactly one outcome": True,
        "the ledger agrees with the emulator's transition log": True,
        "the refused and exhausted messages are in the dead-letter queue": True,
        "TaskRouter's events are in the ledger (source=event)": True,
    }
    assert f"database {database} on 127.0.0.1:5432" in output
    assert "Audit history of a raced reservation" in output
    # An accept in the UI and a timeout by TaskRouter, learnt from its callbacks.
    assert "Transitions that were not ours, from TaskRouter's events (source=event)" in output
    assert "pending→accepted" in output
    assert "pending→timeout" in output
    assert "Nothing lost" in output


def test_the_demo_says_what_to_start_when_the_services_are_down() -> None:
    closed = free_port()
    done = run_demo(
        "--short",
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/reservations",
            "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed}//",
        },
        timeout=30,
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start" in output
    assert "rabbitmq-server -detached" in output
    assert "docker compose up -d postgres" in output


def test_help_shows_every_option_with_its_environment_variable() -> None:
    done = run_demo("--help", timeout=30)
    assert done.returncode == 0
    for option, variable in (
        ("--reservations", "DEMO_RESERVATIONS"),
        ("--short", "DEMO_SHORT"),
        ("--seed", "DEMO_SEED"),
        ("--keep-database", "DEMO_KEEP_DATABASE"),
        ("--database-url", "DATABASE_URL"),
        ("--broker-url", "CELERY_BROKER_URL"),
    ):
        assert option in done.stdout
        assert variable in done.stdout
