"""ops/bench_ledger_scale.py at a few thousand rows: it loads valid chains, measures every figure
it promises, and the full verify finds nothing (a smoke test; no figure is checked)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "ops" / "bench_ledger_scale.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_scale_benchmark_runs_small(admin_url: str) -> None:
    # 4,200 rows: 700 reservations of the loader's six rows (scale.ROWS_PER_RESERVATION), exactly.
    size = ["--rows", "4200", "--tail", "400", "--queries", "5"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *size, "--port", str(_free_port()), "--database-url", admin_url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for promised in (
        "bytes per action:",
        "by reservation",
        "by action",
        "time range page",
        "audit API /v1/events over HTTP",
        "incremental verify since checkpoint 1: 400 rows",
        "full verify: 4,200 rows",
        "ledger compact: ",
        "bytes per action, those months compacted:",
        "archive of ",
    ):
        assert promised in out, out
    assert "0 problem(s)" in out.split("incremental verify")[1]
    assert "full verify: 4,200 rows in" in out
    assert "(0 problem(s))" in out.split("full verify")[1]
    assert "ledger compact: 0 month(s)" not in out  # the months before this one are compacted
