"""What the demo does to each reservation, decided from a seed: pure, no I/O.

A reservation follows a *script*: steps in order, each either a producer publishing an action
(and waiting for its outcome before the next step, as a contact centre wraps up only after the
call) or a change made behind the workers' backs (another agent accepting, TaskRouter timing the
reservation out). Some scripts run with a fault injected by the emulator on that reservation's
updates. Every published action says which outcome it should end with.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.core.planner import Outcome


@dataclass(frozen=True, slots=True)
class Publish:
    """A producer publishes ``action`` (with ``params``); ``duplicate``: the same message twice."""

    action: str
    expected: Outcome
    params: Mapping[str, Any] = field(default_factory=dict)
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Race:
    """``who`` changes the reservation through the emulator's admin API (``change(sid, verb)``)."""

    verb: str
    who: str


Step = Publish | Race


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """An emulator fault on one reservation's updates (``EmulatorAdmin.add_fault``)."""

    kind: str
    rate: float
    seed: int
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    steps: tuple[Step, ...]
    fault: FaultSpec | None = None
    # False: the reservation is never created, so TaskRouter answers 404.
    seeded: bool = True

    @property
    def raced(self) -> bool:
        return any(isinstance(step, Race) for step in self.steps)

    @property
    def actions(self) -> int:
        return sum(1 for step in self.steps if isinstance(step, Publish))


@dataclass(frozen=True, slots=True)
class InvalidMessage:
    """A message a careless producer sends without validating; it must end in reservations.dead."""

    name: str
    reject_code: str
    # None: not JSON at all; else a JSON object (its SIDs are filled in by the runner).
    message: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    scripts: tuple[Script, ...]
    invalid: tuple[InvalidMessage, ...]

    @property
    def actions(self) -> int:
        """Actions that must each get exactly one outcome (duplicates count once)."""
        return sum(script.actions for script in self.scripts) + sum(
            1 for bad in self.invalid if bad.message is not None
        )


APPLIED, ALREADY, INVALID = Outcome.APPLIED, Outcome.ALREADY_APPLIED, Outcome.INVALID_TRANSITION
AGENT, TASKROUTER = "another agent", "TaskRouter"
# The chance that an eligible update hits a fault in the scripts that retry.
FAULT_RATE = 0.5


def _conference(rng: random.Random) -> dict[str, Any]:
    return {
        "to": f"client:agent-{rng.randrange(100, 999)}",
        "from_": f"+1555010{rng.randrange(1000, 9999)}",
        "timeout": 30,
        "end_conference_on_exit": True,
        "status_callback": "https://callbacks.example.com/conference",
        "status_callback_event": ["initiated", "answered"],
    }


def _dequeue(rng: random.Random) -> dict[str, Any]:
    return {"dequeue_from": f"+1555010{rng.randrange(1000, 9999)}", "dequeue_timeout": 20}


def _call(rng: random.Random, accept: bool) -> dict[str, Any]:
    return {
        "call_from": f"+1555010{rng.randrange(1000, 9999)}",
        "call_url": "https://twiml.example.com/agent",
        "call_accept": accept,
    }


def _reject(rng: random.Random) -> dict[str, Any]:
    return {"worker_activity_sid": "WA" + "".join(rng.choice("0123456789abcdef") for _ in range(32))}


def tame_fault_seed(rng: random.Random, rate: float, *, longest_run: int = 2, draws: int = 12) -> int:
    """A fault seed whose first update fails, and which never fails more than ``longest_run`` in a row.

    The emulator draws once from ``random.Random(seed)`` for every eligible request
    (``workers.testing.emulator.faults``), and one reservation's updates happen one at a time, so the
    seed decides exactly which updates fail: retries happen, and none runs out of them.
    """
    while True:
        seed = rng.randrange(1, 2**31)
        draw = random.Random(seed)
        fails = [draw.random() < rate for _ in range(draws)]
        run = longest = 0
        for failed in fails:
            run = run + 1 if failed else 0
            longest = max(longest, run)
        if fails[0] and longest <= longest_run:
            return seed


def _script(kind: str, rng: random.Random) -> Script:
    wrap_up = (Publish("wrapup", APPLIED), Publish("complete", APPLIED))
    if kind == "raced accept (412)":
        return Script(
            kind,
            (
                Publish("call", APPLIED, _call(rng, accept=False)),
                Race("accept", AGENT),
                Publish("accept", ALREADY),
                *wrap_up,
            ),
        )
    if kind == "raced wrap-up (412)":
        return Script(kind, (Publish("accept", APPLIED), Race("wrapup", AGENT), Publish("complete", APPLIED)))
    if kind == "timed out":
        return Script(kind, (Race("timeout", TASKROUTER), Publish("accept", INVALID)))
    if kind == "503s, retried":
        fault = FaultSpec("unavailable", FAULT_RATE, tame_fault_seed(rng, FAULT_RATE))
        return Script(kind, (Publish("accept", APPLIED), Publish("complete", APPLIED)), fault)
    if kind == "429s, retried":
        fault = FaultSpec("throttle", FAULT_RATE, tame_fault_seed(rng, FAULT_RATE), retry_after=1)
        return Script(kind, (Publish("conference", APPLIED, _conference(rng)), *wrap_up), fault)
    if kind == "accept, wrap up, complete":
        return Script(kind, (Publish("accept", APPLIED), *wrap_up))
    if kind == "reject":
        return Script(kind, (Publish("reject", APPLIED, _reject(rng)),))
    if kind == "conference":
        return Script(kind, (Publish("conference", APPLIED, _conference(rng)), *wrap_up))
    if kind == "accepted elsewhere":
        return Script(kind, (Race("accept", AGENT), Publish("accept", ALREADY), Publish("complete", APPLIED)))
    if kind == "duplicate delivery":
        return Script(kind, (Publish("accept", APPLIED, duplicate=True), Publish("complete", APPLIED)))
    if kind == "dequeue":
        return Script(kind, (Publish("dequeue", APPLIED, _dequeue(rng)), Publish("complete", APPLIED)))
    if kind == "timed out (412)":
        return Script(
            kind,
            (
                Publish("call", APPLIED, _call(rng, accept=False)),
                Race("timeout", TASKROUTER),
                Publish("conference", INVALID, _conference(rng)),
            ),
        )
    if kind == "call":
        return Script(kind, (Publish("call", APPLIED, _call(rng, accept=True)), *wrap_up))
    if kind == "rejected elsewhere":
        return Script(kind, (Race("reject", AGENT), Publish("dequeue", INVALID, _dequeue(rng))))
    raise ValueError(f"unknown script kind {kind!r}")


# In priority order: a short run takes the first ones, so it still shows races, 412s and retries.
KINDS: tuple[str, ...] = (
    "raced accept (412)",
    "raced wrap-up (412)",
    "timed out",
    "503s, retried",
    "429s, retried",
    "accept, wrap up, complete",
    "reject",
    "conference",
    "accepted elsewhere",
    "duplicate delivery",
    "dequeue",
    "timed out (412)",
    "call",
    "rejected elsewhere",
)
# How often each kind fills the places beyond one of each: mostly the plain, happy paths.
_WEIGHTS = dict.fromkeys(KINDS, 1) | {
    "accept, wrap up, complete": 4,
    "conference": 4,
    "dequeue": 3,
    "call": 2,
    "reject": 2,
}


def build(reservations: int, seed: int) -> Scenario:
    """The scripts of ``reservations`` reservations, plus the ones every run has.

    Every run also has a reservation whose updates always fail with 503 (its action runs out of
    retries and is dead-lettered), an action on a reservation TaskRouter does not know (404:
    failed) and two invalid messages (rejected_input).
    """
    if reservations < 1:
        raise ValueError("the demo needs at least one reservation")
    rng = random.Random(seed)
    kinds = list(KINDS[:reservations])
    extra = reservations - len(kinds)
    kinds += rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()), k=extra)
    rng.shuffle(kinds)
    scripts = [_script(kind, rng) for kind in kinds]
    scripts.append(
        Script(
            "503s, retries exhausted",
            (Publish("accept", Outcome.DEAD_LETTERED),),
            FaultSpec("unavailable", 1.0, rng.randrange(1, 2**31)),
        )
    )
    scripts.append(Script("unknown reservation (404)", (Publish("accept", Outcome.FAILED),), seeded=False))
    invalid = (
        InvalidMessage(
            "call without call_url",
            "missing_field",
            {"action": "call", "params": {"call_from": "+15550100999"}},
        ),
        InvalidMessage("not JSON", "invalid_json", None),
    )
    return Scenario(seed, tuple(scripts), invalid)
