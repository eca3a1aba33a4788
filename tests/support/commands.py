"""Our HTTP APIs as the real `reservations` commands, on a free port, until they answer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from workers.testing.emulator.process import free_port


@dataclass
class ServedCommand:
    """``base`` while it runs; ``log`` (its stderr) once it has stopped."""

    base: str
    process: subprocess.Popen[bytes]
    log: str = field(default="")

    def stop(self) -> str:
        """Stop it (once) and read its stderr into ``log``."""
        if self.process.returncode is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.log = self.process.stderr.read().decode()
            self.process.stderr.close()
        return self.log


@contextmanager
def served_command(
    name: str, env: Mapping[str, str], ready_path: str, timeout: float = 20
) -> Iterator[ServedCommand]:
    """``reservations NAME --port P`` with ``env``, once ``ready_path`` answers 200; stopped (and
    its stderr read into ``log``) on the way out. Fails if it exits or never answers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "reservations"), name, "--port", str(port)]
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    served = ServedCommand(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{served.base}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"`reservations {name}` did not answer {ready_path}"
            time.sleep(0.1)
        yield served
    finally:
        served.stop()
