"""Flower, secure by default, watches a real worker on the real broker.

Flower runs as ``celery -A workers flower`` (our configuration without ``--conf``: loopback,
authentication required, read-only unless FLOWER_ALLOW_CONTROL) on a free port; the worker
is the end-to-end fixtures' real ``celery -A workers worker`` (tests/support/e2e.py). Through
Flower's HTTP API an operator sees the worker and the apply task, its arguments masked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.intake.wire import publish_json
from tests.support.e2e import action_for, wait_for_outcome
from workers.broker.topology import APPLY_TASK_NAME
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import free_port
from workers.testing.processes import WorkerProcess

pytest.importorskip("flower", reason="flower is not installed (pip install flower, or the test extra)")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FLOWER_CONFIG = ROOT / "ops" / "flower" / "flowerconfig.py"
AUTH = ("operator", "flower-test-password")
WAIT = 30.0
PII = {"to": "+15557654321", "from_": "+15551234567"}


class Flower:
    log: Path

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.session = requests.Session()
        self.session.auth = AUTH

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.base_url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("Content-Type", "") else response.text

    def until(self, what: str, probe: Any) -> Any:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.25)
        raise AssertionError(f"Flower did not show {what} in {WAIT} s")


@contextmanager
def running_flower(broker_url: str, *arguments: str, **env: str) -> Iterator[Flower]:
    """``celery -A workers flower`` as the README starts it, on a free port of its default
    address (loopback), with ``env`` added to the environment."""
    port = free_port()
    state = tempfile.mkdtemp(prefix="flower-")
    environ = {
        **os.environ,
        "CELERY_BROKER_URL": broker_url,
        "FLOWER_PORT": str(port),
        "FLOWER_DB": str(Path(state) / "flower.db"),
        **env,
    }
    log = Path(state) / "flower.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "flower", *arguments],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = Flower(f"http://127.0.0.1:{port}")
    client.log = log
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"Flower exited with {process.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{client.base_url}/healthcheck", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Flower did not answer in {WAIT} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield client
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        client.session.close()


@pytest.fixture(scope="module")
def flower(broker_url: str, worker: WorkerProcess) -> Iterator[Flower]:
    with running_flower(broker_url, FLOWER_BASIC_AUTH=":".join(AUTH)) as client:
        yield client


def test_flower_refuses_to_start_without_authentication(broker_url: str) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={free_port()}"],
        env={**environ, "CELERY_BROKER_URL": broker_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password"
        )
    )


def test_flower_listens_on_loopback_unless_told(flower: Flower) -> None:
    assert f"Visit me at {flower.base_url}" in flower.log.read_text()


def test_flower_is_read_only_unless_control_is_allowed(
    flower: Flower, broker_url: str, celery_app: Any
) -> None:
    task_id = str(uuid.uuid4())
    refused = flower.session.post(f"{flower.base_url}/api/task/revoke/{task_id}", timeout=10)
    assert refused.status_code == 403
    assert "Read only" in refused.text
    for path in ("/api/worker/shutdown/anyone", "/api/task/rate-limit/reservations.apply"):
        assert (
            flower.session.post(f"{flower.base_url}{path}", data={"ratelimit": "1/m"}, timeout=10).status_code
            == 403
        )
    assert not revoked_by_a_worker(celery_app, task_id)
    # Allowed on purpose (and through the ops/ copy of the configuration): the revoke goes out.
    with running_flower(
        broker_url, f"--conf={FLOWER_CONFIG}", FLOWER_BASIC_AUTH=":".join(AUTH), FLOWER_ALLOW_CONTROL="true"
    ) as controlling:
        allowed = controlling.session.post(f"{controlling.base_url}/api/task/revoke/{task_id}", timeout=10)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json() == {"message": f"Revoked '{task_id}'"}
    assert revoked_by_a_worker(celery_app, task_id)


def revoked_by_a_worker(celery_app: Any, task_id: str) -> bool:
    """Whether a worker holds ``task_id`` among its revoked tasks (Celery's remote control)."""
    revoked: dict[str, list[str]] = celery_app.control.inspect(timeout=10, limit=1).revoked() or {}
    return any(task_id in ids for ids in revoked.values())


def test_flower_refuses_requests_without_its_basic_auth(flower: Flower) -> None:
    assert requests.get(f"{flower.base_url}/api/workers", timeout=10).status_code == 401
    assert (
        requests.get(f"{flower.base_url}/api/workers", auth=("operator", "wrong"), timeout=10).status_code
        == 401
    )


@pytest.mark.parametrize("feed", ["enqueue", "plain JSON"])
def test_flower_shows_the_worker_and_the_apply_task_with_masked_arguments(
    flower: Flower,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    celery_app: Any,
    broker_url: str,
    feed: str,
) -> None:
    """Handed to the apply task, or applied by the intake itself (plain JSON, one broker hop):
    either way an operator sees a run of the apply task."""
    workers = flower.until("the worker", lambda: dict(flower.get("/api/workers", refresh=1).items()))
    assert any(name.startswith(f"{worker.name}@") for name in workers), workers

    reservation = admin.create_reservation()
    action = action_for(reservation, ActionKind.CONFERENCE, params=dict(PII))
    if feed == "enqueue":
        celery_app.enqueue(action)
    else:
        publish_json(broker_url, action.to_message())
    assert wait_for_outcome(ledger, action.action_id).outcome == "applied"

    task_id = str(action.action_id)  # the task id is the producer's action_id

    def settled_task() -> dict[str, Any] | None:
        task: dict[str, Any] = flower.get("/api/tasks").get(task_id) or {}
        return task if task.get("state") == "SUCCESS" else None

    task = flower.until(f"task {task_id} succeeded", settled_task)
    assert task["name"] == APPLY_TASK_NAME
    assert task["worker"].startswith(f"{worker.name}@")
    assert task["result"] == "'applied'"
    assert reservation.sid in task["args"]
    for value in PII.values():
        assert value not in task["args"]
        assert value not in str(flower.get(f"/api/task/info/{task_id}"))

    # Prometheus scrapes /metrics without credentials (Flower serves it unauthenticated).
    metrics = requests.get(f"{flower.base_url}/metrics", timeout=10).text
    assert "flower_events_total" in metrics
    assert APPLY_TASK_NAME in metrics
