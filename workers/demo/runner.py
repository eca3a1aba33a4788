"""Play a :class:`~workers.demo.scenario.Scenario` on the real services, and check nothing was lost.

It starts what the demo needs (a private RabbitMQ vhost, a ledger database of its own, the
emulator and a real ``celery -A workers worker`` as subprocesses), publishes each reservation's
actions as plain JSON through :class:`workers.producer.Producer`, one step after the other as
outcomes land in the ledger, and cleans up everything it started, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import random
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from kombu.connection import Connection
from kombu.messaging import Producer as KombuProducer

from workers.config import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN
from workers.core.planner import Outcome
from workers.demo.scenario import InvalidMessage, Publish, Race, Scenario, Script
from workers.emulator.admin import EmulatorAdmin, TransitionInfo
from workers.emulator.process import EmulatorProcess
from workers.errors import ReservationsError
from workers.ledger.connector import Connector, database_name, drop_database, with_database
from workers.ledger.migrations import migrate
from workers.ledger.models import EventKind, LedgerEvent, Role
from workers.ledger.store import Ledger
from workers.producer import Producer
from workers.topology import (
    ACTION_ID_HEADER,
    ACTIONS_EXCHANGE,
    DEAD_LETTER_QUEUE_NAME,
    OUTCOME_HEADER,
    REJECT_CODE_HEADER,
    dead_letter_queue,
)
from workers.worker_process import WorkerProcess

DEMO_PII_KEY = "reservations-demo-pii-key"
PRODUCER_NAME = "reservations-demo"
# Short waits, so retries happen within seconds (Celery countdowns are whole seconds, at least 1).
WORKER_RETRY_ENV = {
    "RETRY_BASE_DELAY": "0.5",
    "RETRY_MAX_DELAY": "2",
    "RETRY_MAX_RETRIES": "4",
    "RETRY_CONFLICT_PAUSE": "0.005",
}
POLL_INTERVAL = 0.1
DEAD_LETTER_WAIT = 10.0
HISTORY_WAIT = 10.0
ALL_OUTCOMES = tuple(outcome.value for outcome in Outcome)
START_POSTGRES = (
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    "   (or: docker compose up -d postgres)"
)
START_RABBITMQ = "rabbitmq-server -detached   (or: docker compose up -d rabbitmq)"


class ServiceUnavailable(ReservationsError):
    """PostgreSQL or RabbitMQ does not answer; the message says how to start it."""


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


@dataclass(frozen=True, slots=True)
class Sent:
    """One action the demo published, and what became of it."""

    action_id: uuid.UUID
    action: str
    script: str
    reservation_sid: str
    expected: Outcome
    outcome: str | None = None


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Result:
    """Everything the demo found; ``lost`` is true when the run must exit non-zero."""

    database: str = ""
    broker: str = ""
    sent: list[Sent] = field(default_factory=list)
    messages_published: int = 0
    outcome_rows: Counter[uuid.UUID] = field(default_factory=Counter)
    conflicts: int = 0
    attempts_by_status: Counter[str] = field(default_factory=Counter)
    http_calls: dict[str, dict[str, int]] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    raced_script: str | None = None
    raced_history: list[LedgerEvent] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        return bool(self.errors) or not all(check.ok for check in self.checks)

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(sent.outcome or "(none)" for sent in self.sent)

    @property
    def unexpected(self) -> list[Sent]:
        return [s for s in self.sent if s.outcome is not None and s.outcome != s.expected.value]

    @property
    def throughput(self) -> float:
        settled = sum(1 for s in self.sent if s.outcome is not None)
        return settled / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def calls_per_action(self) -> float:
        total = sum(op.get("total", 0) for op in self.http_calls.values())
        reached = sum(1 for s in self.sent if s.outcome not in (None, Outcome.REJECTED_INPUT.value))
        return total / reached if reached else 0.0


Say = Callable[[str], None]
Progress = Callable[[int, int], None]


# -- services -------------------------------------------------------------------------------------


def check_services(database_url: str, broker_url: str) -> None:
    """Raise :class:`ServiceUnavailable`, saying what to start, unless both services answer."""
    import psycopg

    problems = []
    try:
        with psycopg.connect(with_database(database_url, "postgres"), connect_timeout=3):
            pass
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(f"PostgreSQL cannot be reached ({first_line}).\n  Start it: {START_POSTGRES}")
    parts = urlsplit(broker_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        problems.append(f"RabbitMQ does not answer on {host}:{port} ({exc}).\n  Start it: {START_RABBITMQ}")
    if problems:
        raise ServiceUnavailable("\n".join(problems))


@contextmanager
def private_vhost(broker_url: str, say: Say) -> Iterator[str]:
    """A RabbitMQ vhost of the demo's own (deleted afterwards), when ``rabbitmqctl`` can make one.

    Otherwise the broker URL as given: the demo then shares its queues with whatever else uses it.
    """
    ctl = shutil.which("rabbitmqctl")
    parts = urlsplit(broker_url)
    vhost = f"reservations-demo-{uuid.uuid4().hex[:8]}"
    user = unquote(parts.username or "guest")
    try:
        if ctl is None:
            raise FileNotFoundError("rabbitmqctl is not on PATH")
        subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=30)  # noqa: S603
    except (OSError, subprocess.SubprocessError) as exc:
        shown = unquote(parts.path[1:]) or "/"
        say(f"broker: cannot make a private vhost ({exc}); using vhost {shown!r} as given")
        yield broker_url
        return
    try:
        subprocess.run(  # noqa: S603 - our own command line
            [ctl, "-q", "set_permissions", "-p", vhost, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True, timeout=30)  # noqa: S603


def _shown_url(database_url: str, database: str) -> str:
    """``database_url`` pointed at ``database``, without its password, for showing."""
    if "://" not in database_url:
        return with_database(database_url, database)
    parts = urlsplit(database_url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{database}"))


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or ''}".rstrip(":")


def worker_env(broker_url: str, database_url: str, emulator_url: str) -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": broker_url,
        "DATABASE_URL": database_url,
        "LEDGER_MIGRATION_URL": database_url,
        "TASKROUTER_BASE_URL": emulator_url,
        "TWILIO_ACCOUNT_SID": EMULATOR_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": EMULATOR_AUTH_TOKEN,
        "LEDGER_PII_KEY": DEMO_PII_KEY,
        "LEDGER_POOL_MAX": "16",
        **WORKER_RETRY_ENV,
    }


# -- the run --------------------------------------------------------------------------------------


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
    result.broker = f"{_where(broker_url)}, vhost {unquote(urlsplit(broker_url).path[1:]) or '/'}"
    say(f"broker: RabbitMQ on {result.broker}")

    db_url = with_database(options.database_url, options.database)
    result.database = f"{database_name(db_url)} on {_where(options.database_url)}"
    drop_database(db_url)
    if not options.keep_database:
        stack.callback(drop_database, db_url)
    applied = migrate(db_url)
    kept = "dropped afterwards"
    if options.keep_database:
        shown = shlex.quote(_shown_url(options.database_url, options.database))
        kept = f"kept afterwards: DATABASE_URL={shown} reservations history --reservation WR..."
    say(f"ledger: database {result.database}, {len(applied)} migration(s) applied; {kept}")

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
    ledger = stack.enter_context(Ledger(connector, DEMO_PII_KEY))
    producer = stack.enter_context(Producer(broker_url))

    lanes = _seed(scenario, admin, random.Random(scenario.seed))
    say(
        f"seeded {sum(1 for lane in lanes if lane.script.seeded)} reservations; publishing"
        f" {scenario.actions} actions as plain JSON to the 'reservations' exchange"
    )
    invalid = _publish_invalid(scenario.invalid, broker_url, lanes[0].sids)
    result.messages_published += len(scenario.invalid)
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
    for bad in scenario.invalid:
        if bad.name in invalid:
            action_id = invalid[bad.name]
            result.sent.append(
                Sent(action_id, "call", bad.name, "", Outcome.REJECTED_INPUT, final.get(action_id))
            )
    _inspect(result, scenario, lanes, ledger, admin, broker_url)


def _keep_log_on_failure(worker: WorkerProcess, result: Result, say: Say) -> None:
    """Copy the worker's log somewhere that outlives the run (WorkerProcess deletes its own)."""
    if not result.lost:
        return
    with contextlib.suppress(OSError, AssertionError):
        kept = Path(tempfile.gettempdir()) / f"reservations-demo-worker-{time.strftime('%Y%m%dT%H%M%S')}.log"
        shutil.copyfile(worker.log_path, kept)
        say(f"worker log kept in {kept}")


@dataclass
class Lane:
    """One reservation's script being played: which step is next, and what it waits for."""

    script: Script
    sids: dict[str, str]
    rng: random.Random
    position: int = 0
    waiting: uuid.UUID | None = None
    published: list[tuple[uuid.UUID, Publish]] = field(default_factory=list)
    settled: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.script.steps)

    def advance(self, settled: Mapping[uuid.UUID, str], producer: Producer, admin: EmulatorAdmin) -> int:
        """Run every step that can run now; returns how many messages it published."""
        sent = 0
        while not self.done:
            if self.waiting is not None:
                if self.waiting not in settled:
                    return sent
                self.waiting = None
                self.settled += 1
                self.position += 1
                continue
            step = self.script.steps[self.position]
            if isinstance(step, Race):
                admin.change(self.sids["reservation_sid"], step.verb)
                self.position += 1
                continue
            action_id = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            message = self.message(action_id, step)
            for _ in range(2 if step.duplicate else 1):
                producer.publish(message)
                sent += 1
            self.published.append((action_id, step))
            self.waiting = action_id
        return sent

    def message(self, action_id: uuid.UUID, step: Publish) -> dict[str, Any]:
        message: dict[str, Any] = {
            "schema": "reservation-action/v1",
            "action_id": str(action_id),
            "action": step.action,
            **self.sids,
            "correlation_id": f"demo-{self.sids['reservation_sid'][-8:]}",
            "producer": PRODUCER_NAME,
        }
        if step.params:
            message["params"] = dict(step.params)
        return message

    def results(self, outcomes: Mapping[uuid.UUID, str]) -> list[Sent]:
        sid = self.sids["reservation_sid"]
        return [
            Sent(action_id, step.action, self.script.name, sid, step.expected, outcomes.get(action_id))
            for action_id, step in self.published
        ]


def _random_sid(rng: random.Random, prefix: str) -> str:
    return prefix + f"{rng.getrandbits(128):032x}"


def _seed(scenario: Scenario, admin: EmulatorAdmin, rng: random.Random) -> list[Lane]:
    workspace = admin.create_workspace(friendly_name="Reservations demo")["sid"]
    lanes = []
    for number, script in enumerate(scenario.scripts, start=1):
        if script.seeded:
            info = admin.create_reservation(workspace_sid=workspace, worker_name=f"Agent {number:02d}")
            sids = {"workspace_sid": workspace, "reservation_sid": info.sid, "task_sid": info.task_sid}
        else:
            sids = {
                "workspace_sid": workspace,
                "reservation_sid": _random_sid(rng, "WR"),
                "task_sid": _random_sid(rng, "WT"),
            }
        if script.fault is not None:
            admin.add_fault(
                script.fault.kind,
                rate=script.fault.rate,
                seed=script.fault.seed,
                operations=["update"],
                reservation_sids=[sids["reservation_sid"]],
                retry_after=script.fault.retry_after,
            )
        lanes.append(Lane(script, sids, random.Random(rng.getrandbits(64))))
    return lanes


def _publish_invalid(
    invalid: tuple[InvalidMessage, ...], broker_url: str, sids: Mapping[str, str]
) -> dict[str, uuid.UUID]:
    """Publish messages that skip validation, as a careless producer would; their action ids."""
    ids: dict[str, uuid.UUID] = {}
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = KombuProducer(connection)
        for bad in invalid:
            if bad.message is None:
                body = f"accept {sids['reservation_sid']} please".encode()
            else:
                action_id = uuid.uuid4()
                ids[bad.name] = action_id
                message = {
                    "schema": "reservation-action/v1",
                    "action_id": str(action_id),
                    **sids,
                    **bad.message,
                    "producer": PRODUCER_NAME,
                }
                body = json.dumps(message).encode()
            producer.publish(
                body,
                exchange=ACTIONS_EXCHANGE,
                routing_key="action.accept",
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                mandatory=True,
            )
    return ids


# -- what happened --------------------------------------------------------------------------------


def _all_events(ledger: Ledger) -> list[LedgerEvent]:
    events: list[LedgerEvent] = []
    after = None
    while True:
        page = ledger.history(after=after, limit=1000)
        events.extend(page)
        if len(page) < 1000:
            return events
        after = page[-1].cursor


def _settled_history(ledger: Ledger, expected_outcome_rows: int) -> list[LedgerEvent]:
    """The whole ledger, once every outcome row is below the read horizon (or after a wait)."""
    deadline = time.monotonic() + HISTORY_WAIT
    while True:
        events = _all_events(ledger)
        rows = sum(1 for e in events if e.kind in (EventKind.OUTCOME, EventKind.REJECTED_INPUT))
        if rows >= expected_outcome_rows or time.monotonic() > deadline:
            return events
        time.sleep(POLL_INTERVAL)


def _inspect(
    result: Result,
    scenario: Scenario,
    lanes: list[Lane],
    ledger: Ledger,
    admin: EmulatorAdmin,
    broker_url: str,
) -> None:
    events = _settled_history(ledger, sum(1 for s in result.sent if s.outcome is not None))
    for event in events:
        if event.kind in (EventKind.OUTCOME, EventKind.REJECTED_INPUT) and event.action_id is not None:
            result.outcome_rows[event.action_id] += 1
        elif event.kind == EventKind.CONFLICT:
            result.conflicts += 1
        elif event.kind == EventKind.ATTEMPT:
            result.attempts_by_status[str(event.http_status or "no answer")] += 1
    counters = admin.counters()
    result.http_calls = {
        operation: dict(counts)
        for operation, counts in counters["operations"].items()
        if counts.get("total", 0) > 0
    }

    unsettled = [s for s in result.sent if s.outcome is None]
    not_one = [s for s in result.sent if result.outcome_rows[s.action_id] != 1]
    detail = f"{len(result.sent)} actions, {len(result.sent) - len(unsettled)} settled"
    if unsettled:
        detail += f"; no outcome: {', '.join(f'{s.script}/{s.action}' for s in unsettled[:5])}"
    if not_one and not unsettled:
        detail += f"; {len(not_one)} without exactly one outcome row"
    result.checks.append(Check("every action has exactly one outcome", not (unsettled or not_one), detail))

    seeded = {lane.sids["reservation_sid"] for lane in lanes if lane.script.seeded}
    log = [t for t in admin.transitions() if t.reservation_sid in seeded]
    current = {sid: admin.reservation(sid) for sid in seeded}
    problems = compare_transitions(events, log, {sid: r.status for sid, r in current.items()})
    transitions = [e for e in events if e.kind == EventKind.TRANSITION]
    first_seen = sum(1 for e in transitions if e.from_status is None)
    agree_detail = f"{len(log)} emulator log entries, {len(transitions)} ledger transitions"
    agree_detail += f" ({first_seen} of them first sightings)"
    if problems:
        agree_detail += f"; {len(problems)} disagreement(s): " + "; ".join(problems[:3])
    result.checks.append(
        Check("the ledger agrees with the emulator's transition log", not problems, agree_detail)
    )

    expected_dead = {
        str(s.action_id): s.expected.value
        for s in result.sent
        if s.expected in (Outcome.DEAD_LETTERED, Outcome.FAILED, Outcome.REJECTED_INPUT)
    }
    without_id = sum(1 for bad in scenario.invalid if bad.message is None)
    result.dead_letters = peek_dead_letters(broker_url, len(expected_dead) + without_id)
    found = {str(d.get(ACTION_ID_HEADER)): str(d.get(OUTCOME_HEADER)) for d in result.dead_letters}
    missing = [
        f"{action_id} ({outcome})" for action_id, outcome in expected_dead.items() if action_id not in found
    ]
    anonymous = sum(1 for d in result.dead_letters if d.get(ACTION_ID_HEADER) is None)
    if anonymous < without_id:
        missing.append(f"{without_id - anonymous} message(s) without an action_id")
    dlq_detail = f"{len(result.dead_letters)} message(s) in {DEAD_LETTER_QUEUE_NAME}"
    if missing:
        dlq_detail += f"; missing: {', '.join(missing)}"
    result.checks.append(
        Check("the refused and exhausted messages are in the dead-letter queue", not missing, dlq_detail)
    )

    raced = [lane for lane in lanes if lane.script.raced and "412" in lane.script.name]
    raced = raced or [lane for lane in lanes if lane.script.raced]
    if raced:
        sid = raced[0].sids["reservation_sid"]
        result.raced_script = raced[0].script.name
        result.raced_history = [e for e in events if e.reservation_sid == sid]


def peek_dead_letters(broker_url: str, expected: int) -> list[dict[str, Any]]:
    """The headers of the messages in ``reservations.dead``, left in the queue (not acknowledged).

    Waits up to ``DEAD_LETTER_WAIT`` seconds for ``expected`` of them: a dead letter is published
    just after its outcome is recorded.
    """
    deadline = time.monotonic() + DEAD_LETTER_WAIT
    while True:
        found: list[dict[str, Any]] = []
        with Connection(broker_url) as connection:
            channel = connection.channel()
            dead_letter_queue()(channel).declare()
            while True:
                message = channel.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=False)
                if message is None:
                    break
                headers = dict(message.headers or {})
                found.append(
                    {
                        name: headers.get(name)
                        for name in (
                            ACTION_ID_HEADER,
                            OUTCOME_HEADER,
                            REJECT_CODE_HEADER,
                            "x-reservations-reason",
                        )
                    }
                )
            channel.close()  # the messages go back to the queue, unacknowledged
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.removeprefix("W/").strip('"')


def compare_transitions(
    events: list[LedgerEvent], log: list[TransitionInfo], current: Mapping[str, str]
) -> list[str]:
    """Where the ledger's transitions and the emulator's log disagree (empty when they agree).

    * every update of ours that TaskRouter applied (source ``api``) is one ledger transition with
      the same statuses and ETags, and every transition the ledger credits to an action is one of
      them;
    * every transition the ledger observed on a fetch leads to the status the reservation had at
      that ETag;
    * the ledger's last status of each reservation is the emulator's current one.
    """
    problems: list[str] = []
    status_at: dict[tuple[str, str], str] = {}
    api: dict[tuple[str, str], TransitionInfo] = {}
    for entry in log:
        status_at[(entry.reservation_sid, str(entry.version_before))] = entry.from_status
        status_at[(entry.reservation_sid, str(entry.version_after))] = entry.to_status
        if entry.source == "api":
            api[(entry.reservation_sid, str(entry.version_after))] = entry
    ledger_last: dict[str, str] = {}
    credited: set[tuple[str, str]] = set()
    for event in events:
        if event.kind != EventKind.TRANSITION or event.reservation_sid is None:
            continue
        sid, after = event.reservation_sid, _etag(event.etag_after)
        ledger_last[sid] = str(event.to_status)
        key = (sid, str(after))
        if event.action_id is not None:
            applied = api.get(key)
            if applied is None:
                problems.append(f"{sid}: the ledger credits {event.to_status} (ETag {after}) to an action")
            elif (applied.from_status, applied.to_status) != (event.from_status, event.to_status):
                problems.append(
                    f"{sid}: ETag {after} is {applied.from_status}->{applied.to_status} in the log"
                )
            credited.add(key)
        elif key in status_at and status_at[key] != event.to_status:
            problems.append(
                f"{sid}: observed {event.to_status} at ETag {after}, the log says {status_at[key]}"
            )
    for key, entry in api.items():
        if key not in credited:
            problems.append(f"{key[0]}: update to {entry.to_status} (ETag {key[1]}) missing from the ledger")
    for sid, status in current.items():
        if sid in ledger_last and ledger_last[sid] != status:
            problems.append(f"{sid}: the ledger ends at {ledger_last[sid]}, TaskRouter at {status}")
    return problems
