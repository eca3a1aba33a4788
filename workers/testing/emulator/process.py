"""The emulator as a separate process (``reservations emulator``), for the demo and benchmarks.

A subprocess has its own interpreter and core, so it measures and behaves like the real
service the workers talk to; the context manager always stops it, even when the caller fails.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import requests

from workers.errors import ConfigurationError
from workers.testing.processes import Background, terminate

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (another process could still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def emulator_command() -> list[str]:
    """``reservations emulator`` from this interpreter's environment, else
    ``python -m workers.testing.emulator``."""
    script = Path(sys.executable).with_name("reservations")
    if script.exists():
        return [str(script), "emulator"]
    return [sys.executable, "-m", "workers.testing.emulator"]


class EmulatorProcess(Background):
    """Start ``reservations emulator`` on a free loopback port and wait until it answers."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._command = [*prefix, *emulator_command(), "--host", host, "--port", str(self.port), *extra_args]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(  # noqa: S603 - our own command line
            self._command, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        deadline = time.monotonic() + self._startup_timeout
        with requests.Session() as session:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    raise ConfigurationError(f"the emulator exited with {code}: {self.stderr()}")
                with contextlib.suppress(requests.RequestException):
                    if session.get(f"{self.base_url}/_emulator/health", timeout=1.0).status_code == 200:
                        return
                time.sleep(0.05)
        self.stop()
        waited = self._startup_timeout
        raise ConfigurationError(f"the emulator did not answer on {self.base_url} in {waited} s")

    def stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            terminate(process, STOP_TIMEOUT)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
