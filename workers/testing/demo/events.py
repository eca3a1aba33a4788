"""The demo's TaskRouter events: the events API as its own process, and two reservations whose
transitions are not ours (an agent accepting "in the UI", a reservation timing out by itself),
which the ledger learns from TaskRouter's signed callbacks as source=event transitions."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import requests

from workers.errors import ConfigurationError
from workers.events.api import CALLBACK_PATH
from workers.ledger.models import EventKind, LedgerRow
from workers.ledger.reader import LedgerReader
from workers.testing.demo.results import Check, Result
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import STARTUP_TIMEOUT, STOP_TIMEOUT, free_port
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN
from workers.testing.processes import Background, terminate

EVENTS_WAIT = 15.0


class EventsApiProcess(Background):
    """``reservations events-api`` on a free loopback port, its signatures checked with the
    emulator's auth token; waits until it is ready."""

    def __init__(self, database_url: str) -> None:
        self.port = free_port()
        self._env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "EVENTS_PUBLIC_URL": self.base_url,
            "EVENTS_AUTH_TOKEN": EMULATOR_AUTH_TOKEN,
        }
        script = Path(sys.executable).with_name("reservations")
        command = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-c", "from workers.cli import main; main()"]
        )
        self._command = [*command, "events-api", "--host", "127.0.0.1", "--port", str(self.port)]
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def callback_url(self) -> str:
        return self.base_url + CALLBACK_PATH

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            self._command, env=self._env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise ConfigurationError(f"the events API exited with {self._process.returncode}")
                with contextlib.suppress(requests.RequestException):
                    if session.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                        return
                time.sleep(0.05)
        self.stop()
        raise ConfigurationError(f"the events API did not answer on {self.base_url} in {STARTUP_TIMEOUT} s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            terminate(process, STOP_TIMEOUT)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def play_events(result: Result, admin: EmulatorAdmin, ledger: LedgerReader, callback_url: str) -> None:
    """An agent accepts a reservation in the UI; another times out by itself. Both reach the
    ledger as TaskRouter's signed callbacks; the check is that each shows up as a source=event
    transition."""
    workspace = str(admin.create_workspace(event_callback_url=callback_url)["sid"])
    in_the_ui = admin.create_reservation(workspace_sid=workspace, worker_name="Alice")
    timing_out = admin.create_reservation(workspace_sid=workspace, worker_name="Bob", timeout=1.0)
    admin.change(in_the_ui.sid, "accept")  # Alice clicks Accept in Flex: not one of our actions
    wanted = {in_the_ui.sid: "accepted", timing_out.sid: "timeout"}
    deadline = time.monotonic() + EVENTS_WAIT
    rows: list[LedgerRow] = []
    while True:
        rows = [
            row
            for sid in wanted
            for row in ledger.history(reservation_sid=sid)
            if row.kind == EventKind.TRANSITION and row.source == "event"
        ]
        seen = {(row.reservation_sid, row.to_status) for row in rows}
        if all(item in seen for item in wanted.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    missing = [f"{sid} {status}" for sid, status in wanted.items() if (sid, status) not in seen]
    result.event_history = rows
    detail = f"{len(rows)} source=event transitions: an accept in the UI and a timeout by TaskRouter"
    if missing:
        detail += f"; missing: {', '.join(missing)}"
    result.checks.append(Check("TaskRouter's events are in the ledger (source=event)", not missing, detail))
