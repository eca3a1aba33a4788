"""Play a :class:`~workers.testing.demo.scenario.Scenario` on the real services, and check nothing was lost.

It starts what the demo needs (a private RabbitMQ vhost, a ledger database of its own, the
emulator and a real ``celery -A workers worker`` as subprocesses), publishes each reservation's
actions as plain JSON through :class:`workers.broker.producer.Producer`, one step after the other as
outcomes land in the ledger, and cleans up everything it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import random
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from workers.broker.producer import Producer
from workers.core.planner import Outcome
from workers.errors import ReservationsError
from workers.ledger.connector import Connector, database_name, drop_database, with_database
from workers.ledger.migrations import migrate
from workers.ledger.models import Role
from workers.ledger.reader import LedgerReader
from workers.testing.demo.checks import inspect
from workers.testing.demo.events import EventsApiProcess, play_events
from workers.testing.demo.lanes import publish_invalid, seed_lanes
from workers.testing.demo.results import Result, Sent
from workers.testing.demo.scenario import Scenario
from workers.testing.demo.services import (
    DEMO_PII_KEY,
    Say,
    ServiceUnavailable,
    check_services,
    private_vhost,
    shown_url,
    where,
    worker_env,
)
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN
from workers.testing.processes import WorkerProcess

__all__ = ["Options", "Result", "ServiceUnavailable", "run"]

POLL_INTERVAL = 0.1
ALL_OUTCOMES = tuple(outcome.value for outcome in Outcome)


@dataclass(frozen=True, slots=True)
class Options:
    reservations: int
    seed: int
    database_url: str
    broker_url: str
    database: str = "reservations_demo"
    keep_database: bool = False
    concurrency: int = 8
    settle_timeout: float = 90.0


Progress = Callable[[int, int], None]


def run(options: Options, scenario: Scenario, say: Say, progress: Progress) -> Result:
    """Play ``scenario``; never raises for a failure of the run itself (see ``Result.errors``)."""
    result = Result()
    check_services(options.database_url, options.broker_url)
    with ExitStack() as stack:
        try:
            _run(options, scenario, say, progress, result, stack)
        except (ReservationsError, RuntimeError, OSError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
    return result


def _run(
    options: Options, scenario: Scenario, say: Say, progress: Progress, result: Result, stack: ExitStack
) -> None:
    broker_url = stack.enter_context(private_vhost(options.broker_url, say))
    result.broker = f"{where(broker_url)}, vhost {unquote(urlsplit(broker_url).path[1:]) or '/'}"
    say(f"broker: RabbitMQ on {result.broker}")

    db_url = with_database(options.database_url, options.database)
    result.database = f"{database_name(db_url)} on {where(options.database_url)}"
    drop_database(db_url)
    if not options.keep_database:
        stack.callback(drop_database, db_url)
    applied = migrate(db_url)
    kept = "dropped afterwards"
    if options.keep_database:
        shown = shlex.quote(shown_url(options.database_url, options.database))
        kept = f"kept afterwards: DATABASE_URL={shown} reservations history --reservation WR..."
    say(f"ledger: database {result.database}, {len(applied)} migration(s) applied; {kept}")

    events_api = stack.enter_context(EventsApiProcess(db_url))
    say(f"events: reservations events-api on {events_api.base_url} (TaskRouter's callbacks into the ledger)")

    emulator = stack.enter_context(
        EmulatorProcess(
            extra_args=[
                "--account-sid",
                EMULATOR_ACCOUNT_SID,
                "--auth-token",
                EMULATOR_AUTH_TOKEN,
                "--strict-headers",
            ]
        )
    )
    say(f"emulator: TaskRouter emulator on {emulator.base_url} (pid {emulator.pid})")
    admin = stack.enter_context(EmulatorAdmin(emulator.base_url))

    worker = WorkerProcess(
        worker_env(broker_url, db_url, emulator.base_url),
        pool="threads",
        concurrency=options.concurrency,
        name="demo-worker",
    )
    started = time.monotonic()
    stack.enter_context(worker)
    stack.callback(_keep_log_on_failure, worker, result, say)
    pid = worker.process.pid if worker.process else "?"
    say(
        f"worker: celery -A workers worker --pool threads --concurrency {options.concurrency}"
        f" (pid {pid}, ready in {time.monotonic() - started:.1f} s)"
    )

    connector = Connector(db_url, Role.READER, min_size=1, max_size=2)
    connector.open()
    ledger = stack.enter_context(LedgerReader(connector, DEMO_PII_KEY))
    producer = stack.enter_context(Producer(broker_url))

    lanes = seed_lanes(scenario, admin, random.Random(scenario.seed))
    say(
        f"seeded {sum(1 for lane in lanes if lane.script.seeded)} reservations; publishing"
        f" {scenario.actions} actions as plain JSON to the 'reservations' exchange"
    )
    invalid = publish_invalid(scenario.invalid, broker_url, lanes[0].sids)
    result.messages_published += len(scenario.invalid)
    result.invalid = len(scenario.invalid)
    began = time.monotonic()
    deadline = began + options.settle_timeout
    settled: dict[uuid.UUID, str] = {}
    last_settled = began
    while True:
        for lane in lanes:
            result.messages_published += lane.advance(settled, producer, admin)
        ours = sum(lane.settled for lane in lanes) + sum(1 for a in invalid.values() if a in settled)
        progress(ours, scenario.actions)
        if all(lane.done for lane in lanes) and all(a in settled for a in invalid.values()):
            last_settled = time.monotonic()
            break
        if time.monotonic() > deadline:
            result.errors.append(f"not every action settled within {options.settle_timeout:.0f} s")
            break
        time.sleep(POLL_INTERVAL)
        settled = {r.action_id: str(r.outcome) for r in ledger.settled_actions(ALL_OUTCOMES, limit=100_000)}
    result.elapsed = last_settled - began

    final = {r.action_id: str(r.outcome) for r in ledger.settled_actions(ALL_OUTCOMES, limit=100_000)}
    for lane in lanes:
        result.sent.extend(lane.results(final))
        result.duplicates += sum(1 for _, step in lane.published if step.duplicate)
    for bad in scenario.invalid:
        if bad.name in invalid:
            action_id = invalid[bad.name]
            result.sent.append(
                Sent(action_id, "call", bad.name, "", Outcome.REJECTED_INPUT, final.get(action_id))
            )
    inspect(result, scenario, lanes, ledger, admin, broker_url)
    play_events(result, admin, ledger, events_api.callback_url)


def _keep_log_on_failure(worker: WorkerProcess, result: Result, say: Say) -> None:
    """Copy the worker's log somewhere that outlives the run (WorkerProcess deletes its own)."""
    if not result.lost:
        return
    with contextlib.suppress(OSError, AssertionError):
        kept = Path(tempfile.gettempdir()) / f"reservations-demo-worker-{time.strftime('%Y%m%dT%H%M%S')}.log"
        shutil.copyfile(worker.log_path, kept)
        say(f"worker log kept in {kept}")
