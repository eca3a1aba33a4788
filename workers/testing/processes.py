"""Real processes for the tests, the demo and the benchmarks: ``celery -A workers worker`` as a
subprocess, and what every background service here shares (started and stopped as a context
manager, a subprocess stopped politely and then for sure)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

READY_TIMEOUT = 60.0


class Background:
    """Something ``start()`` runs and ``stop()`` ends; ``with`` stops it even when the body fails."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def terminate(process: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL if ``process`` has not exited in ``timeout`` seconds; its exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


class WorkerProcess(Background):
    """``celery -A workers worker`` as a subprocess, with its log in a temporary file."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        pool: str = "threads",
        concurrency: int = 8,
        name: str | None = None,
        loglevel: str | None = "INFO",
        app: str = "workers",
    ) -> None:
        """``loglevel`` None runs the worker at Celery's default level (WARNING), as the README does."""
        self.env = {**os.environ, **env}
        self.app = app  # what ``celery -A`` loads (the benchmarks also run a naive peer's app)
        self.pool = pool
        self.concurrency = concurrency
        self.name = name or f"worker-{uuid.uuid4().hex[:8]}"
        self.loglevel = loglevel
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        assert self._log is not None
        return Path(self._log.name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        """Launch the worker and wait until it reports ready (its ready file)."""
        self.launch()
        self.wait_ready()

    @property
    def ready_file(self) -> Path:
        return self._ready_file

    def launch(self) -> None:
        """Launch the worker without waiting for it to report ready."""
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)  # noqa: SIM115
        self._ready_file = Path(tempfile.gettempdir()) / f"{self.name}-{uuid.uuid4().hex}.ready"
        self.env["WORKER_READY_FILE"] = str(self._ready_file)
        command = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--hostname", f"{self.name}@%h", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        if self.loglevel is not None:
            command += ["--loglevel", self.loglevel]
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self) -> None:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log()}")
            if self._ready_file.exists():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the worker did not become ready in {READY_TIMEOUT} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the worker, as a crash or an out-of-memory killer would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown: finish what is running), then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        return terminate(self.process, timeout)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self._ready_file.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            if exc_type is None and not os.environ.get("KEEP_WORKER_LOGS"):
                self.log_path.unlink(missing_ok=True)
