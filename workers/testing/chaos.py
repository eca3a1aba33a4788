"""The project's own chaos run: real workers under faults, SIGKILLs and cut database connections,
checked against the emulator's own update log (issue 12, point 5).

:func:`run` starts everything it needs and removes it afterwards: a migrated scratch database, a
private RabbitMQ vhost, the emulator (a subprocess) with a seeded fault mix, and N real Celery
worker processes (threads pool). It seeds one reservation per action, publishes the actions as plain
JSON through the intake (:class:`~workers.broker.producer.Producer`), and while they run SIGKILLs a
random worker every ``kill_every`` seconds (starting a new one) and terminates the workers'
PostgreSQL connections every ``cut_every`` seconds. It then waits (bounded) for every action's
outcome and :func:`check` holds the ledger to the emulator's update log:

- **lost**: an action with no outcome;
- **applied twice**: more than one update landed on its reservation (one action per reservation,
  so every landed update is that action's);
- **landed, recorded otherwise**: an update landed and the outcome is neither ``applied`` nor
  ``indeterminate``;
- **indeterminate without a lost answer**: ``indeterminate`` although no update of that reservation
  lost its answer: none was dropped after apply, none reached the emulator within
  ``lost_answer_window`` seconds of a SIGKILL or a connection cut (a time window: the emulator cannot
  tell which worker sent a request, so this errs towards calling an indeterminate explained). An
  update that did not land counts too: a 412 whose worker died before recording it leaves an
  intent behind, and a reservation whose ETag a conflict storm or a status race moved cannot
  tell the next run that ours did not land (a call changes no status);
- **applied, nothing landed**: ``applied`` although no update of ours landed (the ledger claims an
  effect someone else had).

Every loop is bounded in count and time; everything it starts is stopped in ``finally`` blocks.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from workers.broker.producer import Producer
from workers.core.action import Action, ActionKind
from workers.ledger.connector import drop_database, with_database
from workers.ledger.migrations import migrate
from workers.testing.emulator.admin import EmulatorAdmin, UpdateInfo
from workers.testing.emulator.process import EmulatorProcess
from workers.testing.emulator.settings import emulator_env
from workers.testing.processes import WorkerProcess

HARNESS_APPLICATION = "chaos-harness"  # our own connections: never cut
RECORDED_WHEN_LANDED = frozenset({"applied", "indeterminate"})
RABBITMQ = "127.0.0.1:5672"

_CALL = {"call_from": "+15550001111", "call_url": "https://example.test/twiml"}
_REDIRECT = {"redirect_call_sid": "CA" + "0" * 31 + "1", "redirect_url": "https://example.test/redirect"}


@dataclass(frozen=True, slots=True)
class Recipe:
    """One kind of action in the mix: what is published, on a reservation seeded in ``seed_status``."""

    label: str
    kind: ActionKind
    params: Mapping[str, Any]
    seed_status: str
    changes_status: bool


MIX: tuple[Recipe, ...] = (
    Recipe("accept", ActionKind.ACCEPT, {}, "pending", True),
    Recipe("reject", ActionKind.REJECT, {"worker_activity_sid": "WA" + "0" * 31 + "1"}, "pending", True),
    Recipe("wrapup", ActionKind.WRAPUP, {}, "accepted", True),
    Recipe("complete", ActionKind.COMPLETE, {}, "accepted", True),
    Recipe(
        "conference", ActionKind.CONFERENCE, {"to": "client:alice", "from_": "+15550100001"}, "pending", True
    ),
    Recipe("dequeue", ActionKind.DEQUEUE, {"dequeue_from": "+15550100002"}, "pending", True),
    Recipe("call accept", ActionKind.CALL, {**_CALL, "call_accept": True}, "pending", True),
    Recipe("update status", ActionKind.UPDATE, {"reservation_status": "accepted"}, "pending", True),
    # Non-status-changing: the double effects.
    Recipe("call", ActionKind.CALL, _CALL, "pending", False),
    Recipe("redirect", ActionKind.REDIRECT, _REDIRECT, "pending", False),
    Recipe(
        "update supervise",
        ActionKind.UPDATE,
        {"instruction": "supervise", "supervisor": "client:supervisor"},
        "accepted",
        False,
    ),
    Recipe("update redirect", ActionKind.UPDATE, {"instruction": "redirect", **_REDIRECT}, "pending", False),
)


@dataclass(frozen=True, slots=True)
class FaultMix:
    """Rates of the emulator's faults (each seeded from the run's seed)."""

    conflict: float = 0.20  # 412 races: another writer bumps the version right before our update
    throttle: float = 0.05  # 429 with Retry-After
    server_error: float = 0.05  # 500 and 503, half each
    drop_before: float = 0.02  # the connection dropped before the update is applied
    drop_after: float = 0.03  # the update applied, its answer dropped
    status_race: float = 0.05  # someone else changes the status right before our update

    def install(self, admin: EmulatorAdmin, seed: int) -> None:
        both = ["fetch", "update"]
        admin.add_fault("conflict_storm", rate=self.conflict, seed=seed + 1)
        admin.add_fault("status_race", rate=self.status_race, seed=seed + 2)
        admin.add_fault("throttle", rate=self.throttle, seed=seed + 3, operations=both)
        admin.add_fault("internal_error", rate=self.server_error / 2, seed=seed + 4, operations=both)
        admin.add_fault("unavailable", rate=self.server_error / 2, seed=seed + 5, operations=both)
        admin.add_fault("drop", rate=self.drop_before, seed=seed + 6, operations=both)
        admin.add_fault("drop", rate=self.drop_after, seed=seed + 7, operations=["update"], after_apply=True)

    def describe(self) -> str:
        return (
            f"412 races {self.conflict:.0%}, status races {self.status_race:.0%}, 429 {self.throttle:.0%}, "
            f"5xx {self.server_error:.0%}, drops {self.drop_before:.0%} before"
            f" / {self.drop_after:.0%} after apply"
        )


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    actions: int = 1000
    workers: int = 3
    concurrency: int = 8
    kill_every: float = 3.0  # seconds between SIGKILLs (0: none)
    cut_every: float = 4.0  # seconds between cuts of the workers' database connections (0: none)
    faults: FaultMix = field(default_factory=FaultMix)
    seed: int = 12
    publish_seconds: float = 0.0  # spread the publishes over this long (0: as fast as confirms go)
    chaos_seconds: float = 180.0  # kills and cuts stop after this, settled or not
    settle_seconds: float = 60.0  # then the rest may settle, without kills or cuts, this long
    lost_answer_window: float = 1.0
    no_status_share: float | None = None  # share of actions that change no status (None: 4 in 12)
    admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True, slots=True)
class Planned:
    action: Action
    recipe: Recipe


@dataclass(slots=True)
class Progress:
    total: int
    settled: int = 0
    kills: int = 0
    cuts: int = 0
    phase: str = "starting"


@dataclass(frozen=True, slots=True)
class Findings:
    total: int
    outcomes: Mapping[str, int]
    landed_updates: int
    lost_answers: int  # landed updates whose answer was dropped
    lost: list[uuid.UUID]
    applied_twice: list[uuid.UUID]
    landed_misrecorded: list[tuple[uuid.UUID, str, str]]  # (action, recipe, outcome)
    indeterminate: list[uuid.UUID]
    indeterminate_unexplained: list[uuid.UUID]
    applied_not_landed: list[uuid.UUID]
    twice_by_recipe: Mapping[str, int]
    kills: int = 0
    cuts: int = 0
    seconds: float = 0.0

    @property
    def indeterminate_share(self) -> float:
        return len(self.indeterminate) / self.total if self.total else 0.0

    def failures(self) -> list[str]:
        checks = {
            "lost": self.lost,
            "applied twice": self.applied_twice,
            "landed, recorded otherwise": self.landed_misrecorded,
            "indeterminate without a lost answer": self.indeterminate_unexplained,
            "applied, nothing landed": self.applied_not_landed,
        }
        return [name for name, found in checks.items() if found]

    def rows(self) -> list[tuple[str, str, bool | None]]:
        """(figure, value, passed) for a table: None where it is a figure, not an invariant."""
        misrecorded = Counter(outcome for _, _, outcome in self.landed_misrecorded)
        twice = ", ".join(f"{k} {v}" for k, v in sorted(self.twice_by_recipe.items()))
        return [
            ("actions", str(self.total), None),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())), None),
            ("SIGKILLs / connection cuts", f"{self.kills} / {self.cuts}", None),
            (
                "updates landed / answers dropped after apply",
                f"{self.landed_updates} / {self.lost_answers}",
                None,
            ),
            ("lost (no outcome)", str(len(self.lost)), not self.lost),
            (
                "applied twice",
                f"{len(self.applied_twice)}" + (f" ({twice})" if twice else ""),
                not self.applied_twice,
            ),
            (
                "landed, recorded otherwise",
                f"{len(self.landed_misrecorded)}"
                + (
                    f" ({', '.join(f'{k} {v}' for k, v in sorted(misrecorded.items()))})"
                    if misrecorded
                    else ""
                ),
                not self.landed_misrecorded,
            ),
            ("indeterminate", f"{len(self.indeterminate)} ({self.indeterminate_share:.1%})", None),
            (
                "indeterminate without a lost answer",
                str(len(self.indeterminate_unexplained)),
                not self.indeterminate_unexplained,
            ),
            ("applied, nothing landed", str(len(self.applied_not_landed)), not self.applied_not_landed),
            ("seconds", f"{self.seconds:.1f}", None),
        ]


def plan_actions(
    count: int, seed: int, mix: Sequence[Recipe] = MIX, no_status_share: float | None = None
) -> list[tuple[Recipe, int]]:
    """Which recipe each action follows (round robin over a seeded shuffle: every kind is present).

    ``no_status_share``: the share of actions that change no status (the others change one);
    None: every recipe of ``mix`` equally often.
    """
    rng = random.Random(seed)
    if no_status_share is None:
        order = [mix[i % len(mix)] for i in range(count)]
    else:
        quiet = [recipe for recipe in mix if not recipe.changes_status]
        loud = [recipe for recipe in mix if recipe.changes_status]
        n_quiet = round(count * no_status_share)
        order = [quiet[i % len(quiet)] for i in range(n_quiet)]
        order += [loud[i % len(loud)] for i in range(count - n_quiet)]
    rng.shuffle(order)
    return [(recipe, n) for n, recipe in enumerate(order)]


def check(
    planned: Sequence[Planned],
    outcomes: Mapping[uuid.UUID, str | None],
    updates: Sequence[UpdateInfo],
    disruptions: Sequence[float],
    window: float,
    *,
    kills: int = 0,
    cuts: int = 0,
    seconds: float = 0.0,
) -> Findings:
    """Hold the ledger's outcomes to the emulator's update log (see the module's docstring)."""
    by_reservation: dict[str, list[UpdateInfo]] = {}
    for update in updates:
        by_reservation.setdefault(update.reservation_sid, []).append(update)
    ordered = sorted(disruptions)

    def near_disruption(at: float) -> bool:
        return any(at - window <= moment <= at + window for moment in ordered)

    lost, twice, misrecorded, indeterminate, unexplained, not_landed = [], [], [], [], [], []
    twice_by_recipe: Counter[str] = Counter()
    landed_total = lost_answers = 0
    for item in planned:
        action_id = item.action.action_id
        landed = [u for u in by_reservation.get(item.action.reservation_sid, []) if u.landed]
        landed_total += len(landed)
        lost_answers += sum(u.answer_lost for u in landed)
        outcome = outcomes.get(action_id)
        if outcome is None:
            lost.append(action_id)
        if len(landed) > 1:
            twice.append(action_id)
            twice_by_recipe[item.recipe.label] += 1
        if landed and outcome is not None and outcome not in RECORDED_WHEN_LANDED:
            misrecorded.append((action_id, item.recipe.label, outcome))
        if outcome == "indeterminate":
            indeterminate.append(action_id)
            tried = by_reservation.get(item.action.reservation_sid, [])
            if not any(u.answer_lost or near_disruption(u.at) for u in tried):
                unexplained.append(action_id)
        if outcome == "applied" and not landed:
            not_landed.append(action_id)
    tally = Counter(outcome or "none" for outcome in outcomes.values())
    return Findings(
        total=len(planned),
        outcomes=dict(tally),
        landed_updates=landed_total,
        lost_answers=lost_answers,
        lost=lost,
        applied_twice=twice,
        landed_misrecorded=misrecorded,
        indeterminate=indeterminate,
        indeterminate_unexplained=unexplained,
        applied_not_landed=not_landed,
        twice_by_recipe=dict(twice_by_recipe),
        kills=kills,
        cuts=cuts,
        seconds=seconds,
    )


# -- the run -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    url = with_database(admin_url, f"chaos_{uuid.uuid4().hex[:10]}")
    migrate(url)
    try:
        yield url
    finally:
        drop_database(url)


@contextlib.contextmanager
def private_vhost() -> Iterator[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is needed to create the run's private RabbitMQ vhost")
    name = f"chaos-{uuid.uuid4().hex[:10]}"
    subprocess.run([ctl, "-q", "add_vhost", name], check=True, capture_output=True)  # noqa: S603
    try:
        subprocess.run(  # noqa: S603 - our own command line
            [ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@{RABBITMQ}/{name}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", name], check=False, capture_output=True)  # noqa: S603


def cut_connections(admin_url: str, db_url: str) -> int:
    """Terminate every backend on the run's database but the harness's own; how many."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    with psycopg.connect(admin_url, autocommit=True, application_name=HARNESS_APPLICATION) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid() AND application_name <> %s",
            (dbname, HARNESS_APPLICATION),
        ).fetchone()
    return int(row[0]) if row else 0


class _Fleet:
    """N worker processes; one is SIGKILLed and replaced (started in the background) on demand."""

    def __init__(self, env: Mapping[str, str], size: int, concurrency: int, rng: random.Random) -> None:
        self._env, self._concurrency, self._rng = dict(env), concurrency, rng
        self._lock = threading.Lock()
        self.alive: list[WorkerProcess] = []
        self._starting: list[Future[WorkerProcess]] = []
        self._starter = ThreadPoolExecutor(max_workers=max(1, size), thread_name_prefix="chaos-start")
        for future in [self._starter.submit(self._start) for _ in range(size)]:
            self._adopt(future.result())

    def _start(self) -> WorkerProcess:
        worker = WorkerProcess(self._env, concurrency=self._concurrency, loglevel="WARNING")
        worker.start()
        return worker

    def _adopt(self, worker: WorkerProcess) -> None:
        with self._lock:
            self.alive.append(worker)

    def kill_one(self) -> bool:
        """SIGKILL a random running worker and start another; False when none is running yet."""
        with self._lock:
            if not self.alive:
                return False
            victim = self.alive.pop(self._rng.randrange(len(self.alive)))
        victim.kill()
        _dispose(victim)
        future = self._starter.submit(self._start)
        future.add_done_callback(lambda done: None if done.exception() else self._adopt(done.result()))
        self._starting.append(future)
        return True

    def stop(self) -> None:
        self._starter.shutdown(wait=True)  # bounded: a start gives up after its ready timeout
        with self._lock:
            workers, self.alive = self.alive, []
        for worker in workers:
            worker.stop()
            _dispose(worker)


def _dispose(worker: WorkerProcess) -> None:
    worker.__exit__(None, None, None)  # stopped already: removes its ready file and its log


def _outcomes(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    rows = conn.execute(
        "SELECT action_id, outcome FROM ledger.actions WHERE action_id = ANY(%s)", (ids,)
    ).fetchall()
    found: dict[uuid.UUID, str | None] = dict.fromkeys(ids)
    found.update({row[0]: row[1] for row in rows})
    return found


def run(config: ChaosConfig, on_progress: Callable[[Progress], None] | None = None) -> Findings:
    """One whole chaos run (see the module's docstring); everything it starts is gone when it returns."""
    rng = random.Random(config.seed)
    progress = Progress(total=config.actions)
    report = on_progress or (lambda _: None)
    started = time.monotonic()
    with (
        scratch_database(config.admin_url) as db_url,
        private_vhost() as broker_url,
        EmulatorProcess() as emulator,
        EmulatorAdmin(emulator.base_url, timeout=60) as admin,
    ):
        env = {
            "CELERY_BROKER_URL": broker_url,
            "DATABASE_URL": db_url,
            **emulator_env(emulator.base_url),
            "LEDGER_PII_KEY": "chaos-pii-key",
            "LEDGER_POOL_MAX": str(config.concurrency + 4),
            "RETRY_BASE_DELAY": "0.2",
            "RETRY_MAX_DELAY": "1",
            "RETRY_MAX_RETRIES": "12",
            "RETRY_CONFLICT_PAUSE": "0.001",
            "RETRY_IN_FLIGHT": "2",  # the emulator answers at once (no latency faults in the mix)
        }
        workspace = str(admin.create_workspace()["sid"])
        planned: list[Planned] = []
        for recipe, _ in plan_actions(config.actions, config.seed, no_status_share=config.no_status_share):
            reservation = admin.create_reservation(workspace_sid=workspace, status=recipe.seed_status)
            action = Action(
                uuid.uuid4(),
                recipe.kind,
                workspace,
                reservation.sid,
                task_sid=reservation.task_sid,
                params=dict(recipe.params),
            )
            planned.append(Planned(action, recipe))
        ids = [p.action.action_id for p in planned]
        progress.phase = "workers"
        report(progress)
        fleet = _Fleet(env, config.workers, config.concurrency, rng)
        disruptions: list[float] = []
        try:
            config.faults.install(admin, config.seed)
            publisher = ThreadPoolExecutor(1, thread_name_prefix="chaos-publish")
            published = publisher.submit(
                _publish, broker_url, [p.action for p in planned], config.publish_seconds
            )
            publisher.shutdown(wait=False)
            with psycopg.connect(db_url, autocommit=True, application_name=HARNESS_APPLICATION) as conn:
                progress.phase = "chaos"
                now = time.monotonic()
                chaos_until = now + config.chaos_seconds
                next_kill = now + config.kill_every if config.kill_every > 0 else float("inf")
                next_cut = now + config.cut_every if config.cut_every > 0 else float("inf")
                settle_until: float | None = None
                while True:
                    now = time.monotonic()
                    if settle_until is None and (
                        now >= chaos_until or (published.done() and progress.settled == len(ids))
                    ):
                        settle_until = now + config.settle_seconds
                        progress.phase = "settling"
                    if settle_until is None and now >= next_kill:
                        next_kill = now + config.kill_every
                        if fleet.kill_one():
                            disruptions.append(time.time())
                            progress.kills += 1
                    if settle_until is None and now >= next_cut:
                        next_cut = now + config.cut_every
                        disruptions.append(time.time())
                        cut_connections(config.admin_url, db_url)
                        progress.cuts += 1
                    outcomes = _outcomes(conn, ids)
                    progress.settled = sum(outcome is not None for outcome in outcomes.values())
                    report(progress)
                    if published.done() and published.exception() is not None:
                        raise RuntimeError("publishing failed") from published.exception()
                    if progress.settled == len(ids) and published.done():
                        break
                    if settle_until is not None and now >= settle_until:
                        break
                    time.sleep(0.25)
            progress.phase = "checking"
            report(progress)
            updates = admin.updates()
        finally:
            fleet.stop()
        return check(
            planned,
            outcomes,
            updates,
            disruptions,
            config.lost_answer_window,
            kills=progress.kills,
            cuts=progress.cuts,
            seconds=time.monotonic() - started,
        )


def _publish(broker_url: str, actions: Sequence[Action], seconds: float) -> None:
    with Producer(broker_url) as producer:
        producer.connect()
        start = time.monotonic()
        for n, action in enumerate(actions):
            if seconds > 0:
                time.sleep(max(0.0, start + n * seconds / len(actions) - time.monotonic()))
            producer.publish(action)
