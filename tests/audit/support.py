"""Helpers for the audit tests."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import TypeVar

with warnings.catch_warnings():
    # Starlette asks for httpx2 in place of httpx; the TestClient works the same with either.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient as TestClient

T = TypeVar("T")


def eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 15.0) -> T:
    """Call ``probe`` until ``done`` holds for its result.

    Readers only see rows below the oldest ledger writer in flight in their database, so a row
    may show up only once a concurrent writer of the same ledger has committed.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)
