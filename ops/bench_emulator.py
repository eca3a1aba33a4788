"""Benchmark the TaskRouter emulator: fetch-then-update pairs over keep-alive connections.

Starts ``reservations emulator`` as a subprocess pinned to one core (``taskset -c``), pins this
load process to another, seeds one reservation per connection, and drives each with the If-Match
protocol's two calls: fetch (learn the ETag), then update with ``If-Match`` and a ``call``
instruction without ``CallAccept``, which keeps the reservation pending while bumping its
version, so the pair can repeat for as long as the run lasts. Prints requests per second and
latency percentiles. Loopback only; bounded in connections and time.

    .venv/bin/python ops/bench_emulator.py --duration 10 --connections 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN

UPDATE_BODY = b"Instruction=call&CallFrom=%2B15550100&CallUrl=https%3A%2F%2Fexample.com%2Ftwiml"
MAX_CONNECTIONS = 512
MAX_DURATION = 300.0


@dataclass
class Tally:
    requests: int = 0
    pairs: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def count(self, label: str) -> None:
        self.statuses[label] = self.statuses.get(label, 0) + 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default: 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring (default: 1)")
    parser.add_argument(
        "--connections", type=int, default=32, help="concurrent keep-alive connections (default: 32)"
    )
    parser.add_argument("--emulator-core", type=int, default=0, help="CPU for the emulator (default: 0)")
    parser.add_argument("--load-core", type=int, default=1, help="CPU for this load process (default: 1)")
    parser.add_argument(
        "--strict-headers", action="store_true", help="run the emulator with --strict-headers"
    )
    parser.add_argument(
        "--url", default=None, help="benchmark an emulator already running at this loopback URL instead"
    )
    args = parser.parse_args()
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    if not 0 < args.duration <= MAX_DURATION or args.warmup < 0:
        parser.error(f"--duration must be in (0, {MAX_DURATION}] and --warmup non-negative")
    if args.url is not None and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback URL")
    return args


def pin(core: int) -> bool:
    """Pin this process to one CPU, when the platform and the machine allow it."""
    if not hasattr(os, "sched_setaffinity") or core not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {core})
    return True


async def drive(base_url: str, paths: list[str], duration: float, warmup: float) -> Tally:
    token = base64.b64encode(f"{EMULATOR_ACCOUNT_SID}:{EMULATOR_AUTH_TOKEN}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
    update_headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    tally = Tally()
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + duration
    connector = aiohttp.TCPConnector(limit=len(paths), force_close=False)

    async def one(session: aiohttp.ClientSession, path: str) -> None:
        url = base_url + path
        while True:
            started = loop.time()
            if started >= stop_at:
                return
            measured = started >= measure_from
            async with session.get(url, headers=headers) as response:
                await response.read()
                etag = response.headers.get("ETag") or response.headers.get("Etag") or "*"
                fetched = loop.time()
                if measured:
                    tally.requests += 1
                    tally.latencies.append(fetched - started)
                    tally.count(f"fetch {response.status}")
            async with session.post(
                url, data=UPDATE_BODY, headers={**update_headers, "If-Match": etag}
            ) as response:
                await response.read()
                if measured:
                    tally.requests += 1
                    tally.pairs += 1
                    tally.latencies.append(loop.time() - fetched)
                    tally.count(f"update {response.status}")

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, path) for path in paths))
    return tally


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(tally: Tally, duration: float, connections: int, emulator_pinned: str, load_pinned: str) -> None:
    latencies_ms = [sample * 1000 for sample in tally.latencies]
    print(f"emulator: {emulator_pinned}; load: {load_pinned}; {connections} keep-alive connections")
    print(f"measured {duration:.1f} s: {tally.requests} requests ({tally.pairs} fetch+update pairs)")
    print(f"throughput: {tally.requests / duration:,.0f} requests/s ({tally.pairs / duration:,.0f} pairs/s)")
    if latencies_ms:
        print(
            f"latency per request: p50 {percentile(latencies_ms, 0.50):.2f} ms,"
            f" p99 {percentile(latencies_ms, 0.99):.2f} ms, max {max(latencies_ms):.2f} ms,"
            f" mean {statistics.fmean(latencies_ms):.2f} ms"
        )
    print("responses: " + ", ".join(f"{label}: {count}" for label, count in sorted(tally.statuses.items())))


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process so far (Linux), to tell whether it was the bottleneck."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args: argparse.Namespace, base_url: str, emulator_pinned: str, pid: int | None = None) -> int:
    load_pinned = f"core {args.load_core}" if pin(args.load_core) else "not pinned"
    with EmulatorAdmin(base_url) as admin:
        paths = [admin.create_reservation().task_path for _ in range(args.connections)]
        admin.reset_counters()
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        tally = asyncio.run(drive(base_url, paths, args.duration, args.warmup))
        cpu_after, wall = cpu_seconds(pid), time.monotonic() - wall_before
        seen = admin.counters()
    report(tally, args.duration, args.connections, emulator_pinned, load_pinned)
    if cpu_before is not None and cpu_after is not None:
        used = cpu_after - cpu_before
        print(f"emulator CPU use during the run: {100 * used / wall:.0f}% of one core")
        if used > 0:
            # Robust to a slow load generator: what one fully busy emulator core would serve.
            print(
                f"emulator cost: {1e6 * used / seen['requests']:.0f} us CPU per request,"
                f" about {seen['requests'] / used:,.0f} requests/s per core"
            )
    print(f"the emulator counted {seen['requests']} requests in all (warm-up included): {seen['by_status']}")
    failures = {label: count for label, count in tally.statuses.items() if not label.endswith(" 200")}
    return 1 if failures or not tally.requests else 0


def main() -> int:
    args = parse_args()
    if args.url is not None:
        return run(args, args.url.rstrip("/"), "already running (not pinned here)")
    taskset = shutil.which("taskset")
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    pinned = taskset is not None and args.emulator_core in usable and len(usable) > 1
    prefix = [taskset, "-c", str(args.emulator_core)] if pinned and taskset else []
    extra = ["--account-sid", EMULATOR_ACCOUNT_SID, "--auth-token", EMULATOR_AUTH_TOKEN, "--no-access-log"]
    extra.append("--strict-headers" if args.strict_headers else "--no-strict-headers")
    with EmulatorProcess(prefix=prefix, extra_args=extra) as emulator:
        where = f"core {args.emulator_core} (taskset), pid {emulator.pid}" if pinned else "not pinned"
        return run(args, emulator.base_url, where, emulator.pid)


if __name__ == "__main__":
    sys.exit(main())
