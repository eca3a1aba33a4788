"""A worker reports ready (its ready file, ``/readyz``) only once its start-up checks pass, and
says why it is not, at once and at every retry: a real worker process, real services. (A healthy
worker's /healthz and /readyz: tests/workers/test_metrics.py.)"""

from __future__ import annotations

import json
import time

import pytest

from tests.workers.test_metrics import answer
from workers.testing.emulator.process import free_port
from workers.testing.processes import WorkerProcess

pytestmark = pytest.mark.acceptance

WAIT = 60.0  # generous: the cluster is shared and busy; the figures are in the report, not here


def log_lines(worker: WorkerProcess, needle: str) -> list[str]:
    return [line for line in worker.log().splitlines() if needle in line]


def test_a_worker_with_a_wrong_database_url_never_reports_ready_and_says_why(
    worker_env: dict[str, str],
) -> None:
    closed, port = free_port(), free_port()
    env = {
        **worker_env,
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/reservations",
        "WORKER_METRICS_PORT": f"127.0.0.1:{port}",
        "LOG_FORMAT": "json",
    }
    worker = WorkerProcess(env, concurrency=2)
    worker.launch()
    try:
        deadline = time.monotonic() + WAIT
        # Said at once, then again at the next try: never silent.
        while len(log_lines(worker, "not ready: ledger")) < 2:
            assert worker.process is not None
            assert worker.process.poll() is None, worker.log()
            assert time.monotonic() < deadline, f"no second 'not ready' line in {WAIT} s:\n{worker.log()}"
            time.sleep(0.1)
        first = json.loads(log_lines(worker, "not ready: ledger")[0])
        assert first["level"] == "ERROR"
        assert (
            f"not ready: ledger: cannot reach the ledger's PostgreSQL at 127.0.0.1:{closed}/reservations:"
            " Connection refused" in first["message"]
        )
        assert not worker.ready_file.exists()
        status, body = answer(port, "/readyz")
        assert status == 503
        assert body["status"] == "not_ready"
        checks = {c["name"]: c for c in body["checks"]}
        assert checks["ledger"]["status"] == "fail"
        assert checks["broker"]["status"] == checks["taskrouter"]["status"] == "ok"
        assert answer(port, "/healthz") == (200, {"status": "ok"})  # alive, though not ready
        assert not worker.ready_file.exists()
    finally:
        worker.__exit__(None, None, None)
