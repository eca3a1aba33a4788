"""How soon a worker with a wrong DATABASE_URL says why it is not ready (target: 5 s).

Starts real ``celery -A workers worker`` processes against the local RabbitMQ and an in-process
emulator, with ``DATABASE_URL`` on a closed port, and prints for each run the seconds from launch
to the first ``not ready: ledger`` log line, beside the seconds to Celery's own start-up line
(the floor: nothing of ours runs before it), and whether the ready file ever appeared.

    .venv/bin/python ops/bench_readiness.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workers.testing.emulator.process import free_port
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EmulatorSettings, emulator_env

WAIT = 60.0


def seconds_until(log: Path, needle: str, started: float) -> float:
    while needle not in log.read_text(errors="replace"):
        if time.monotonic() - started > WAIT:
            raise SystemExit(f"no {needle!r} in {WAIT} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)
    return time.monotonic() - started


def one_run(run: int, base_url: str, folder: Path) -> str:
    log, ready = folder / f"worker-{run}.log", folder / f"worker-{run}.ready"
    env = {
        **os.environ,
        **emulator_env(base_url),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/reservations",
        "WORKER_READY_FILE": str(ready),
        "LOG_FORMAT": "json",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "threads", "-c", "2",
        "--without-mingle", "--without-gossip", "--loglevel", "INFO", "-n", f"readiness{run}@%h",
    ]  # fmt: skip
    with log.open("wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        celery = seconds_until(log, "Connected to amqp://", started)
        said = seconds_until(log, "not ready: ledger", started)
        time.sleep(3.0)  # a retry later: still not ready
        return (
            f"run {run}: 'not ready: ledger' after {said:.2f} s (Celery connected after {celery:.2f} s);"
            f" ready file: {'PRESENT' if ready.exists() else 'absent'}"
        )
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with EmulatorServer(EmulatorSettings()) as emulator, tempfile.TemporaryDirectory() as folder:
        for run in range(runs):
            print(one_run(run, emulator.base_url, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
