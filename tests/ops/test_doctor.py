"""``reservations doctor`` against the real services: one line per check, the failing one named,
exit status 1 on any failure; and every command's errors in one line, whatever the service."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from kombu.connection import Connection
from psycopg import sql

from workers.broker.topology import actions_queue, apply_queue, dead_letter_queue
from workers.cli import main
from workers.ledger.migrations import known_migrations
from workers.testing.emulator.process import free_port

pytestmark = pytest.mark.usefixtures("emulator")

RESERVATIONS = str(Path(sys.executable).with_name("reservations"))


@pytest.fixture(scope="module")
def declared(broker_url: str) -> str:
    """The private vhost with our topology in it, as a started worker leaves it."""
    with Connection(broker_url) as connection, connection.channel() as channel:
        for queue in (actions_queue(), apply_queue(), dead_letter_queue()):
            queue(channel).declare()
    return broker_url


@pytest.fixture
def env(worker_env: dict[str, str], declared: str) -> dict[str, str]:
    return {**worker_env, "CELERY_BROKER_URL": declared, "FLOWER_PORT": str(free_port())}


def doctor(env: dict[str, str], *, text: bool = True) -> tuple[int, dict[str, dict[str, str]], str]:
    """Exit status, the checks by name (from --format json), and the text output (when ``text``)."""
    runner = CliRunner()
    as_json = runner.invoke(main, ["doctor", "--format", "json"], env=env)
    if not text:
        return as_json.exit_code, {c["name"]: c for c in map(json.loads, as_json.output.splitlines())}, ""
    as_text = runner.invoke(main, ["doctor"], env=env)
    assert as_json.exit_code == as_text.exit_code, as_text.output
    checks = {c["name"]: c for c in map(json.loads, as_json.output.splitlines())}
    assert len(as_text.output.splitlines()) == len(checks)
    return as_json.exit_code, checks, as_text.output


def test_doctor_passes_against_a_migrated_ledger_a_declared_broker_and_taskrouter(
    env: dict[str, str],
) -> None:
    code, checks, text = doctor(env)
    assert code == 0, text
    assert {name: c["status"] for name, c in checks.items()} == {
        "configuration": "ok",
        "ledger": "ok",
        "broker": "ok",
        "taskrouter": "ok",
        "upkeep": "ok",
        "pii_key": "ok",
        "flower_port": "ok",
    }
    latest = known_migrations()[-1]
    assert f"as reservations_writer, migration {latest} (all " in checks["ledger"]["detail"]
    assert "every month that is over compacted" in checks["upkeep"]["detail"]


def test_doctor_warns_of_the_ledgers_upkeep_left_undone(env: dict[str, str], ledger_url: str) -> None:
    """Months over and not compacted, and next month without its partition: a warning naming the
    command for each (exit 0: nothing is lost meanwhile), until cron's commands have run."""
    with psycopg.connect(ledger_url, autocommit=True) as conn:  # next month's partition, empty, gone
        found = conn.execute(
            "SELECT partition_name FROM ledger.events_partition_bounds()"
            " WHERE upper > date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month'"
            " ORDER BY lower LIMIT 1"
        ).fetchone()
        assert found is not None
        conn.execute(
            sql.SQL("ALTER TABLE ledger.events DETACH PARTITION ledger.{}").format(sql.Identifier(found[0]))
        )
        conn.execute(sql.SQL("DROP TABLE ledger.{}").format(sql.Identifier(found[0])))
    stale = {**env, "DATABASE_URL": ledger_url}
    code, checks, text = doctor(stale)
    assert code == 0, text
    assert checks["upkeep"]["status"] == "warn"
    detail = checks["upkeep"]["detail"]
    assert "no partition for next month yet: run `reservations ledger partitions`" in detail
    assert "month(s) over and not compacted: run `reservations ledger compact`" in detail
    runner = CliRunner()
    assert runner.invoke(main, ["ledger", "compact", "--database-url", ledger_url]).exit_code == 0
    assert runner.invoke(main, ["ledger", "partitions", "--database-url", ledger_url]).exit_code == 0
    code, checks, text = doctor(stale)
    assert checks["upkeep"]["status"] == "ok", text


def test_doctor_names_a_ledger_out_of_reach_in_one_line(env: dict[str, str]) -> None:
    closed = free_port()
    code, checks, text = doctor({**env, "DATABASE_URL": f"postgresql://app:pw@127.0.0.1:{closed}/ledger"})
    assert code == 1
    assert checks["ledger"] == {
        "name": "ledger",
        "status": "fail",
        "detail": f"cannot reach the ledger's PostgreSQL at 127.0.0.1:{closed}/ledger: Connection refused",
    }
    assert f"fail  ledger        cannot reach the ledger's PostgreSQL at 127.0.0.1:{closed}/ledger" in text
    assert "pw" not in text
    assert checks["broker"]["status"] == checks["taskrouter"]["status"] == "ok"
    assert "upkeep" not in checks  # the ledger's failure, said once


def test_doctor_warns_of_rows_in_the_default_partition(env: dict[str, str], fresh_db_url: str) -> None:
    """A row whose month had no partition lands in ledger.events_default for good: the upkeep
    check says so (the row is written here with the guards off, five years back)."""
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO ledger.events_default (position, tx_id, recorded_at, chain_key, chain_seq,"
            " prev_hash, row_hash, kind) VALUES (1, '3', now() - interval '5 years', 'rejected_input', 1,"
            " '\\x00', '\\x00', 'rejected_input')"
        )
    code, checks, text = doctor({**env, "DATABASE_URL": fresh_db_url})
    assert code == 0, text
    assert checks["upkeep"]["status"] == "warn"
    assert "rows in ledger.events_default" in checks["upkeep"]["detail"]


def test_doctor_finds_a_ledger_behind_this_release(env: dict[str, str], fresh_db_url: str) -> None:
    known = known_migrations()
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM ledger.schema_migrations WHERE version = %s", (known[-1].version,))
    code, checks, _ = doctor({**env, "DATABASE_URL": fresh_db_url})
    assert code == 1
    assert checks["ledger"]["status"] == "fail"
    assert f"1 of {len(known)} migrations pending ({known[-1]} first)" in checks["ledger"]["detail"]
    assert "run `reservations migrate`" in checks["ledger"]["detail"]


def test_doctor_finds_taskrouter_refusing_the_credentials(env: dict[str, str]) -> None:
    code, checks, _ = doctor({**env, "TWILIO_AUTH_TOKEN": "not-the-token"})
    assert code == 1
    assert checks["taskrouter"]["status"] == "fail"
    assert "refused the credentials of AC" in checks["taskrouter"]["detail"]
    assert "HTTP 401" in checks["taskrouter"]["detail"]
    assert "not-the-token" not in json.dumps(checks)


def test_doctor_finds_a_broker_without_our_topology_and_a_wrong_password(env: dict[str, str]) -> None:
    vhostless = env["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/no-such-vhost"
    code, checks, _ = doctor({**env, "CELERY_BROKER_URL": vhostless})
    assert code == 1
    assert checks["broker"]["detail"].startswith("cannot reach RabbitMQ at 127.0.0.1:")
    assert "no-such-vhost" in checks["broker"]["detail"]


def test_doctor_stops_at_a_bad_setting_with_one_line(env: dict[str, str]) -> None:
    code, checks, text = doctor({**env, "RETRY_MAX_RETRIES": "abc"})
    assert code == 1
    assert text == "fail  configuration RETRY_MAX_RETRIES must be a whole number, not 'abc'\n"
    assert list(checks) == ["configuration"]


def test_a_port_taken_by_something_else_fails(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        code, checks, _ = doctor({**env, "WORKER_METRICS_PORT": f"127.0.0.1:{busy}"}, text=False)
    assert code == 1
    assert checks["metrics_port"]["status"] == "fail"
    assert "does not answer /healthz" in checks["metrics_port"]["detail"]


@pytest.mark.acceptance
@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "celery", "-A", "workers", "worker"],
        [sys.executable, "-m", "celery", "-A", "workers", "flower"],
        [RESERVATIONS, "history", "--reservation", "WR" + "0" * 32],
    ],
    ids=["worker", "flower", "history"],
)
def test_a_bad_setting_stops_every_process_with_one_line(command: list[str]) -> None:
    result = subprocess.run(
        command, env={"RETRY_MAX_RETRIES": "abc", "PATH": ""}, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: RETRY_MAX_RETRIES must be a whole number, not 'abc'\n"


@pytest.mark.acceptance
@pytest.mark.parametrize(
    "command", [["history", "--reservation", "WR" + "0" * 32], ["migrate"], ["ledger", "verify"]]
)
def test_every_command_fails_at_once_with_one_wording_when_the_ledger_is_out_of_reach(
    command: list[str],
) -> None:
    closed = free_port()
    result = subprocess.run(
        [RESERVATIONS, *command],
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/reservations",
            "LEDGER_PII_KEY": "a-pii-key-of-the-test-only",
            "PATH": "",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: cannot reach the ledger's PostgreSQL at 127.0.0.1:{closed}/")
    assert result.stderr.endswith(": Connection refused\n")
    assert result.stderr.count("\n") == 1
