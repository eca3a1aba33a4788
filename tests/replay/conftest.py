"""Replay fixtures: the end-to-end fixtures with few, short retries, so faults dead-letter fast."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from workers.cli import main


@pytest.fixture(scope="module")
def worker_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {
        **worker_env,
        "RETRY_MAX_RETRIES": "1",
        "RETRY_BASE_DELAY": "0.1",
        "RETRY_MAX_DELAY": "0.2",
        "RETRY_CONFLICT_TRIES": "1",
    }


def cli(env: dict[str, str], *args: str) -> Result:
    """Run ``reservations ...`` in-process with the module's environment."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
