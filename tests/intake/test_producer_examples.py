"""The producer examples of ops/PRODUCERS.md (kombu, pika, Node's amqplib), run as they stand there
against a real worker: each publishes one action with its client's defaults and the action is applied
(and a task message kombu labels ``binary`` passes the apply queue's guard).

Only ``AMQP_URL`` (the test's vhost) and the example SIDs (a seeded reservation) are swapped in. The
Node example needs ``npm``: its ``amqplib`` is installed once into pytest's cache folder (git-ignored);
without npm the test is skipped locally and fails under CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kombu.connection import Connection

from tests.support.e2e import action_for, wait_for_outcome
from tests.support.services import unavailable
from workers.broker.topology import APPLY_EXCHANGE, APPLY_ROUTING_KEY, APPLY_TASK_NAME
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.processes import WorkerProcess

PRODUCERS = Path(__file__).resolve().parents[2] / "ops" / "PRODUCERS.md"
AMQPLIB = "amqplib@2"
RUN_TIMEOUT = 60


def example(heading: str) -> str:
    """The first fenced code block under ``heading`` in ops/PRODUCERS.md."""
    text = PRODUCERS.read_text(encoding="utf-8")
    found = re.search(rf"^### {re.escape(heading)}\n.*?^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found is not None, f"no code block under '### {heading}' in {PRODUCERS.name}"
    return found.group(1)


def addressed(code: str, reservation: ReservationInfo) -> str:
    for example_sid, sid in (
        ("WS0123456789abcdef0123456789abcdef", reservation.workspace_sid),
        ("WR0123456789abcdef0123456789abcdef", reservation.sid),
        ("WT0123456789abcdef0123456789abcdef", reservation.task_sid),
    ):
        assert example_sid in code
        code = code.replace(example_sid, sid)
    return code


def run(command: list[str], broker_url: str, cwd: Path) -> uuid.UUID:
    """Run an example; it prints the action_id it published (and confirmed) last."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "AMQP_URL": broker_url},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return uuid.UUID(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_modules(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``amqplib`` installed (reused across runs, unless pytest's cache is off)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        unavailable("npm and node are needed to run the Node producer example")
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("producer-examples-node") if cache is not None else tmp_path_factory.mktemp("node")
    if not (folder / "node_modules" / "amqplib").is_dir():
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(folder), AMQPLIB],  # type: ignore[list-item]
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if installed.returncode != 0:
            unavailable(f"npm install {AMQPLIB} failed: {installed.stderr.strip()[-300:]}")
    return folder


@pytest.mark.parametrize("heading", ["Python with kombu", "Python with pika"])
def test_the_python_examples_are_applied(
    heading: str,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
    tmp_path: Path,
) -> None:
    reservation = admin.create_reservation()
    script = tmp_path / "publish.py"
    script.write_text(addressed(example(heading), reservation))
    action_id = run([sys.executable, str(script)], broker_url, tmp_path)
    assert wait_for_outcome(ledger, action_id).outcome == "applied"
    assert admin.reservation(reservation.sid).status == "accepted"


def test_the_node_example_is_applied(
    node_modules: Path, worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    reservation = admin.create_reservation()
    # An ES module resolves "amqplib" from its own folder up: it runs beside node_modules.
    script = node_modules / f"publish-{uuid.uuid4().hex[:8]}.mjs"
    script.write_text(addressed(example("Node.js with amqplib"), reservation))
    try:
        action_id = run([shutil.which("node") or "node", str(script)], broker_url, node_modules)
    finally:
        script.unlink()
    assert wait_for_outcome(ledger, action_id).outcome == "applied"
    assert admin.reservation(reservation.sid).status == "accepted"


def test_a_task_message_published_with_kombus_defaults_passes_the_guard(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    """Straight to the apply queue (what a Celery client of ours would send, bytes handed to kombu:
    labelled ``binary``): the guard lets a UTF-8 JSON task through, and it is applied."""
    action = action_for(admin.create_reservation())
    task_id = str(action.action_id)
    body = json.dumps([[action.to_message()], {}, {"callbacks": None, "errbacks": None, "chain": None}])
    headers = {"lang": "py", "task": APPLY_TASK_NAME, "id": task_id, "root_id": task_id, "retries": 0}
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        connection.Producer().publish(
            body.encode("utf-8"),
            exchange=APPLY_EXCHANGE.name,
            routing_key=APPLY_ROUTING_KEY,
            content_type="application/json",
            headers=headers,
            delivery_mode=2,
        )
    assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
    assert "refused a message on the apply queue" not in worker.log()
