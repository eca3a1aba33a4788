"""Benchmark the events API on a fresh ledger database that it creates, migrates and drops.

Prints:
  0. **The ledger alone**: transitions/s appended in batches by the API's writer threads, without
     HTTP, in the same run: the ceiling the intake is read against (the ratio is printed).
  1. **Intake**: ``reservations events-api`` as its own process(es) (``--api-workers``,
     EVENTS_API_WORKERS). First 64 senders, each sending its next callback once the last was
     answered: the rate held without a backlog. Then signed Event Callbacks offered at ``--rate``
     per second (open loop: each is sent at its time whatever the answers before it) for
     ``--seconds``. Shows the rate answered 204, the answer latency p50/p99, and the **loss**:
     events answered 204 whose transition is not in the ledger (must be 0), and events never
     answered 204 (the sender's to retry; reported separately). Every 5th event is a duplicate
     delivery (Twilio retries): it must add no row. The load generator is lean (each request
     encoded before the clock starts, keep-alive connections, asyncio streams) so that it leaves
     the shared cores to what it measures; the load average is printed before and after.
  2. **Events to history**: the emulator sends its own signed callbacks for changes made "in the
     UI" (an agent accepting) and for reservations that time out by themselves, at ``--changes``
     per second; for each, from the event's time at TaskRouter (TimestampMs) to its row in the
     ledger (``recorded_at``: the transition's insert, committed a few ms later), p50/p99/max,
     and how many events never showed up (must be 0).

Everything runs on this machine (the load generator too), so read the rates together with the
CPU they share and the load average. Run from the repository root:
``.venv/bin/python ops/bench_events.py --seconds 10 --change-rate 100``; on 2 shared cores it gave
996 of 1,000 callbacks/s answered (p99 360 ms, 0 lost) with one API process, and events to
history p99 under 40 ms at 100 changes/s (README, "Measured").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg

from workers.config import DEFAULT_DATABASE_URL
from workers.core.sids import new_sid
from workers.events.api import CALLBACK_PATH
from workers.ledger.connector import drop_database, with_database
from workers.ledger.migrations import migrate
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.events import sign_form
from workers.testing.emulator.process import free_port
from workers.testing.emulator.server import EmulatorServer
from workers.testing.emulator.settings import EMULATOR_AUTH_TOKEN, EmulatorSettings

LIFE = ("reservation.created", "reservation.accepted", "reservation.wrapup", "reservation.completed")


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _start_api(url: str, port: int, writers: int, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "EVENTS_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "EVENTS_AUTH_TOKEN": EMULATOR_AUTH_TOKEN,
        "EVENTS_WRITERS": str(writers),
        "EVENTS_API_WORKERS": str(workers),
        "LOG_FORMAT": "text",
    }
    reservations = str(Path(sys.executable).parent / "reservations")
    command = [reservations, "events-api", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(url) as conn:  # the database is there; now the port
                conn.execute("SELECT 1")
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the events API did not start")


Delivery = tuple[str, str, bytes]  # reservation, event type, the whole signed HTTP request


def _deliveries(count: int, port: int) -> list[Delivery]:
    """``count`` signed callbacks, each a whole HTTP/1.1 request encoded before the clock starts
    (the generator shares the cores it measures): whole reservation lives, every 5th delivery a
    duplicate."""
    out: list[Delivery] = []
    url = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    at = int(time.time() * 1000)
    while len(out) < count:
        sid = new_sid("WR")
        for n, event_type in enumerate(LIFE):
            form = {
                "EventType": event_type,
                "ResourceType": "Reservation",
                "ResourceSid": sid,
                "ReservationSid": sid,
                "WorkspaceSid": "WS" + "0" * 32,
                "Sid": "EV" + uuid.uuid4().hex,
                "TimestampMs": str(at + n),
            }
            body = urlencode(form).encode()
            head = (
                f"POST {CALLBACK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {sign_form(url, form, EMULATOR_AUTH_TOKEN)}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            out.append((sid, event_type, head.encode() + body))
            if len(out) % 5 == 0:
                out.append(out[-1])  # a duplicate delivery
    return out[:count]


class _Closed(ConnectionError):
    """The server closed a keep-alive connection before it answered (an idle connection past
    uvicorn's keep-alive timeout): a client sends the request again on a new one, as urllib3 does."""


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends a prepared request and reads the status:
    a few microseconds of Python per request, where aiohttp's client spent as much CPU as the
    server it measured."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, request: bytes) -> int:
        self._writer.write(request)
        first = await self._reader.readline()
        if not first:
            raise _Closed("the server closed the connection before answering")
        status = int(first.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self._reader.readexactly(length)
        return status

    def close(self) -> None:
        self._writer.close()


async def _offer(port: int, deliveries: list[Delivery], rate: float) -> dict[str, Any]:
    """Each delivery sent at its time (open loop) on an idle keep-alive connection, or a new one
    (at most 512): what a backlog does to the answers."""
    answered: list[float] = []
    failures: dict[str, int] = {}
    acknowledged: list[int] = []
    idle: list[_Connection] = []
    opened = 0
    room = asyncio.Semaphore(512)

    async def send(index: int) -> None:
        nonlocal opened
        async with room:
            started = time.perf_counter()
            connection = None
            try:
                reused = bool(idle)
                if reused:
                    connection = idle.pop()
                else:
                    connection = await _Connection.open(port)
                    opened += 1
                try:
                    status = await asyncio.wait_for(connection.post(deliveries[index][2]), 15)
                except _Closed:
                    if not reused:
                        raise
                    connection.close()
                    connection = await _Connection.open(port)
                    opened += 1
                    status = await asyncio.wait_for(connection.post(deliveries[index][2]), 15)
                idle.append(connection)
                if status == 204:
                    answered.append(time.perf_counter() - started)
                    acknowledged.append(index)
                else:
                    failures[str(status)] = failures.get(str(status), 0) + 1
            except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                if connection is not None:
                    connection.close()
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

    tasks = []
    began = time.perf_counter()
    for index in range(len(deliveries)):
        pause = began + index / rate - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
        tasks.append(asyncio.create_task(send(index)))
    offered_in = time.perf_counter() - began
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    for connection in idle:
        connection.close()
    return {
        "answered": answered,
        "failures": failures,
        "acknowledged": acknowledged,
        "elapsed": elapsed,
        "offered_in": offered_in,
        "connections": opened,
    }


async def _closed(port: int, deliveries: list[Delivery], senders: int) -> dict[str, Any]:
    """``senders`` senders, each on its own keep-alive connection sending its next callback once
    the last was answered: the rate the API holds without a backlog."""
    answered: list[float] = []
    acknowledged: list[int] = []

    async def sender(first: int) -> None:
        connection = await _Connection.open(port)
        try:
            for index in range(first, len(deliveries), senders):
                started = time.perf_counter()
                if await connection.post(deliveries[index][2]) == 204:
                    answered.append(time.perf_counter() - started)
                    acknowledged.append(index)
        finally:
            connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(sender(n) for n in range(senders)))
    elapsed = time.perf_counter() - began
    return {"answered": answered, "acknowledged": acknowledged, "elapsed": elapsed}


def _lost(url: str, deliveries: list[Delivery], acknowledged: list[int]) -> tuple[int, int]:
    """(acknowledged events missing from the ledger, rows beyond one per transition)."""
    wanted = {(deliveries[i][0], deliveries[i][1]) for i in acknowledged}
    sids = sorted({sid for sid, _ in wanted})
    status = {
        "reservation.created": "pending",
        "reservation.accepted": "accepted",
        "reservation.wrapup": "wrapping",
        "reservation.completed": "completed",
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT chain_key, to_status, count(*) FROM ledger.events"
            " WHERE kind = 'transition' AND source = 'event' AND chain_key = ANY(%s)"
            " GROUP BY chain_key, to_status",
            [sids],
        ).fetchall()
    held = {(sid, to): n for sid, to, n in rows}
    missing = sum(1 for sid, kind in wanted if (sid, status[kind]) not in held)
    extra = sum(n - 1 for n in held.values() if n > 1)
    return missing, extra


def _load() -> str:
    return "load average " + " ".join(f"{value:.1f}" for value in os.getloadavg())


def intake(url: str, rate: float, seconds: float, writers: int, workers: int) -> float:
    port = free_port()
    api = _start_api(url, port, writers, workers)
    try:
        held = _deliveries(int(rate * 5), port)
        closed = asyncio.run(_closed(port, held, 64))
        deliveries = _deliveries(int(rate * seconds), port)
        result = asyncio.run(_offer(port, deliveries, rate))
        load = _load()
    finally:
        api.terminate()
        api.wait(timeout=30)
    times: list[float] = closed["answered"]
    capacity = float(len(times) / closed["elapsed"])
    closed_missing, closed_extra = _lost(url, held, closed["acknowledged"])
    print(
        f"1. intake ({workers} API processes), 64 senders each waiting for its answer:"
        f" {capacity:.0f} callbacks/s answered 204"
        f" ({len(times)} of {len(held)}), p50 {_percentile(times, 0.5) * 1000:.1f} ms,"
        f" p99 {_percentile(times, 0.99) * 1000:.1f} ms;"
        f" LOST {closed_missing}, extra rows {closed_extra}"
    )
    missing, extra = _lost(url, deliveries, result["acknowledged"])
    answered = result["answered"]
    print(
        f"   then {len(deliveries)} signed callbacks offered at {rate:.0f}/s, open loop ({writers} writers"
        f" a process, {result['connections']} connections)"
    )
    print(f"   offered in {result['offered_in']:.2f} s ({len(deliveries) / result['offered_in']:.0f}/s),")
    took = result["elapsed"]
    print(f"   answered 204: {len(answered)} in {took:.2f} s ({len(answered) / took:.0f}/s)")
    print(
        f"   answer latency p50 {_percentile(answered, 0.5) * 1000:.1f} ms,"
        f" p99 {_percentile(answered, 0.99) * 1000:.1f} ms, max {max(answered, default=0) * 1000:.1f} ms"
    )
    failures = result["failures"]
    print(f"   not answered 204 (the sender retries these): {sum(failures.values())} {failures}")
    print(f"   LOST (answered 204, not in the ledger): {missing};  rows beyond one per transition: {extra}")
    print(f"   {load} at the end of the open loop")
    return capacity


def ledger_alone(url: str, writers: int, seconds: float = 5.0, batch: int = 100) -> float:
    """Transitions/s the ledger takes from ``writers`` threads appending batches, no HTTP: the
    ceiling the intake is compared with, measured in the same run."""
    from concurrent.futures import ThreadPoolExecutor

    from workers.ledger.connector import Connector
    from workers.ledger.events import Transition
    from workers.ledger.models import Role, Source
    from workers.ledger.writer import PostgresLedgerWriter

    with Connector(url, Role.WRITER, min_size=writers, max_size=writers) as connector:
        writer = PostgresLedgerWriter(connector, b"")
        deadline = time.perf_counter() + seconds

        def work(_: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                events = [
                    Transition(
                        new_sid("WR"), None, "accepted", None, None, source=Source.EVENT, detail="bench"
                    )
                    for _ in range(batch)
                ]
                writer.append_transitions(events)
                done += batch
            return done

        began = time.perf_counter()
        with ThreadPoolExecutor(writers) as pool:
            total = sum(pool.map(work, range(writers)))
        rate = total / (time.perf_counter() - began)
    print(f"0. the ledger alone: {rate:.0f} transitions/s ({writers} writers, batches of {batch}, no HTTP)")
    return rate


def to_history(url: str, changes: int, rate: float) -> None:
    port = free_port()
    api = _start_api(url, port, 4)
    try:
        # Twilio delivers many callbacks at once; the emulator's default (8 in flight) is the bottleneck.
        settings = EmulatorSettings(
            event_callback_url=f"http://127.0.0.1:{port}{CALLBACK_PATH}", callback_concurrency=64
        )
        with EmulatorServer(settings) as emulator, EmulatorAdmin(emulator.base_url) as admin:
            sids = []
            began = time.perf_counter()
            for n in range(changes):
                pause = began + n / rate - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                if n % 2 == 0:
                    reservation = admin.create_reservation()
                    admin.change(reservation.sid, "accept")  # an agent accepting in the UI
                else:
                    reservation = admin.create_reservation(timeout=0.05)  # times out by itself
                sids.append(reservation.sid)
            time.sleep(0.5)
            admin.flush_events(timeout=30)
            events = [e for sid in sids for e in admin.events(sid) if e.event_type != "reservation.created"]
            time.sleep(1.0)
    finally:
        api.terminate()
        api.wait(timeout=30)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT chain_key, to_status, extract(epoch FROM recorded_at) FROM ledger.events"
            " WHERE kind = 'transition' AND source = 'event' AND chain_key = ANY(%s)",
            [sids],
        ).fetchall()
    recorded = {(sid, to): at for sid, to, at in rows}
    delays, missing = [], 0
    for event in events:
        to = "accepted" if event.event_type == "reservation.accepted" else "timeout"
        at = recorded.get((event.reservation_sid, to))
        if at is None:
            missing += 1
        else:
            delays.append(float(at) - event.timestamp_ms / 1000)
    print(f"2. events to history: {len(events)} changes (accepts in the UI, timeouts) at {rate:.0f}/s")
    print(
        f"   TimestampMs -> ledger row: p50 {_percentile(delays, 0.5) * 1000:.1f} ms,"
        f" p99 {_percentile(delays, 0.99) * 1000:.1f} ms, max {max(delays, default=0) * 1000:.1f} ms"
        f" (target: p99 under 1,000 ms);  missing: {missing}"
    )
    if delays:
        print(f"   mean {statistics.fmean(delays) * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL))
    parser.add_argument("--rate", type=float, default=1000.0, help="callbacks offered per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to offer them")
    parser.add_argument("--writers", type=int, default=4, help="EVENTS_WRITERS of the API")
    parser.add_argument("--api-workers", type=int, default=2, help="EVENTS_API_WORKERS of the API")
    parser.add_argument("--changes", type=int, default=600, help="emulator changes for part 2")
    parser.add_argument("--change-rate", type=float, default=30.0, help="emulator changes per second")
    parser.add_argument("--skip-intake", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    args = parser.parse_args()
    url = with_database(args.database_url, f"bench_events_{uuid.uuid4().hex[:8]}")
    migrate(url)
    try:
        if not args.skip_intake:
            ceiling = ledger_alone(url, args.writers)
            print(f"   {_load()} before the intake")
            answered = intake(url, args.rate, args.seconds, args.writers, args.api_workers)
            print(f"   the intake held {answered / ceiling:.2f}x the ledger alone in this run (64 senders)")
        if not args.skip_history:
            to_history(url, args.changes, args.change_rate)
    finally:
        drop_database(url)


if __name__ == "__main__":
    main()
