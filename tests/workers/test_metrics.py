"""A real worker serves /metrics on WORKER_METRICS_PORT, and the numbers match what it did."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.e2e import action_for, wait_for_outcome
from workers.core.action import Action, ActionKind
from workers.ledger.reader import LedgerReader
from workers.metrics import parse_address
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import free_port
from workers.testing.processes import WorkerProcess

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def answer(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def assert_healthy_and_ready(port: int, worker: WorkerProcess) -> None:
    """Beside /metrics: /healthz, and /readyz once the start-up checks passed; nothing else."""
    assert worker.ready_file.exists()
    status, body = answer(port, "/readyz")
    assert status == 200, body
    assert {c["name"]: c["status"] for c in body["checks"]} == {
        "ledger": "ok",
        "broker": "ok",
        "consuming": "ok",
    }
    assert answer(port, "/healthz") == (200, {"status": "ok"})
    assert answer(port, "/healthz/metrics")[0] == 404  # only /metrics serves metrics
    assert "ready: ledger:" in worker.log()


def test_parse_address() -> None:
    assert parse_address("9808") == ("0.0.0.0", 9808)  # noqa: S104 - what it means
    assert parse_address("127.0.0.1:9900") == ("127.0.0.1", 9900)


@pytest.mark.acceptance
def test_the_worker_counts_outcomes_conflicts_calls_and_lag(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader
) -> None:
    reservation = admin.create_reservation()
    accept = action_for(reservation)
    unknown = Action(  # a reservation TaskRouter does not know: 404 on the fetch, failed
        uuid.uuid4(), ActionKind.ACCEPT, reservation.workspace_sid, "WR" + "e" * 32,
        task_sid=reservation.task_sid,
    )  # fmt: skip
    wrapup = action_for(reservation, ActionKind.WRAPUP)
    port = free_port()
    with WorkerProcess({**worker_env, "WORKER_METRICS_PORT": f"127.0.0.1:{port}"}, concurrency=2) as worker:
        assert_healthy_and_ready(port, worker)
        before = scrape(port)
        assert value(before, "reservations_actions_total", outcome="applied") == 0
        celery_app.enqueue(accept)
        assert wait_for_outcome(ledger, accept.action_id).outcome == "applied"
        # Behind the worker's back: the ETag the ledger cached for the reservation is now stale.
        admin.change(reservation.sid, "touch")
        celery_app.enqueue(unknown)
        celery_app.enqueue(wrapup)
        assert wait_for_outcome(ledger, unknown.action_id).outcome == "failed"
        assert wait_for_outcome(ledger, wrapup.action_id).outcome == "applied"
        deadline = time.monotonic() + 10
        samples = scrape(port)
        while value(samples, "reservations_action_runs_count") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # the task counts its outcome just after the ledger has it
            samples = scrape(port)

    assert value(samples, "reservations_actions_total", outcome="applied") == 2
    assert value(samples, "reservations_actions_total", outcome="failed") == 1
    assert value(samples, "reservations_conflicts_total") == 1
    assert value(samples, "reservations_retries_total") == 0
    assert value(samples, "reservations_ledger_errors_total") == 0
    assert value(samples, "reservations_action_runs_count") == 3
    assert value(samples, "reservations_action_runs_sum") == 3
    assert value(samples, "reservations_dead_letters_total", outcome="failed") == 1
    calls = "reservations_taskrouter_request_duration_seconds_count"
    # accept: fetch (nothing cached yet), update. unknown: fetch 404. wrapup: update with the
    # cached ETag (412), fetch, update.
    assert value(samples, calls, endpoint="fetch", http_status="200") == 2
    assert value(samples, calls, endpoint="fetch", http_status="404") == 1
    assert value(samples, calls, endpoint="update", http_status="200") == 2
    assert value(samples, calls, endpoint="update", http_status="412") == 1
    counted = {key for key in samples if key[0] == calls and samples[key] > 0}
    assert len(counted) == 4
    assert value(samples, "reservations_queue_lag_seconds_count") == 3
    assert value(samples, "reservations_queue_lag_seconds_sum") < 30
    writes = "reservations_ledger_write_duration_seconds_count"
    assert value(samples, writes, query="receive") == 3
    assert value(samples, writes, query="record_outcome") == 1  # failed; applied is in the transition
    assert value(samples, writes, query="record_step") == 4  # three intents and the conflict
    assert admin.reservation(reservation.sid).status == "wrapping"


@pytest.mark.acceptance
def test_a_prefork_worker_adds_up_its_children_in_multiprocess_mode(
    celery_app: Any, worker_env: dict[str, str], admin: EmulatorAdmin, ledger: LedgerReader, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **worker_env,
        "WORKER_METRICS_PORT": f"127.0.0.1:{port}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    actions = [action_for(admin.create_reservation()) for _ in range(4)]
    with WorkerProcess(env, pool="prefork", concurrency=2):
        for action in actions:
            celery_app.enqueue(action)
        for action in actions:
            assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
        deadline = time.monotonic() + 10
        samples = scrape(port)
        while value(samples, "reservations_action_runs_count") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
            samples = scrape(port)
    assert value(samples, "reservations_actions_total", outcome="applied") == 4
    assert value(samples, "reservations_conflicts_total") == 0


@pytest.mark.acceptance
def test_a_prefork_worker_without_multiprocess_mode_serves_nothing(worker_env: dict[str, str]) -> None:
    port = free_port()
    env = {**worker_env, "WORKER_METRICS_PORT": f"127.0.0.1:{port}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with WorkerProcess(env, pool="prefork", concurrency=1) as worker:
        with pytest.raises(urllib.error.URLError):
            scrape(port)
        assert "PROMETHEUS_MULTIPROC_DIR" in worker.log()
