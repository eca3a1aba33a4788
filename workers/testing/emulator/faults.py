"""Deterministic fault injection: latency, throttling, server errors, drops, 412 storms and status races.

Each fault has its own ``random.Random(seed)`` and draws from it once for every request it is
eligible for (its operations and reservation SIDs), whatever the other faults do, so the same
seed and the same request sequence give the same faults. Deciding is synchronous and cheap;
the HTTP layer carries out the plan (sleeping with ``asyncio.sleep``, never blocking the loop).
"""

from __future__ import annotations

import enum
import itertools
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from workers.errors import InvalidParameter
from workers.testing.emulator.counters import OPERATIONS


class FaultKind(enum.StrEnum):
    LATENCY = "latency"  # fixed latency_ms plus uniform jitter_ms
    THROTTLE = "throttle"  # 429 with Retry-After
    INTERNAL_ERROR = "internal_error"  # 500
    UNAVAILABLE = "unavailable"  # 503
    DROP = "drop"  # close the connection without a response
    CONFLICT_STORM = "conflict_storm"  # on update: another actor bumps the version first (412)
    # On update: someone else changes the status first (another agent accepts, rejects, wraps up
    # or completes it; TaskRouter times it out, cancels or rescinds it), so the update meets a 412.
    STATUS_RACE = "status_race"


# Faults that end the request instead of delaying or disturbing it.
FAILURES = frozenset({FaultKind.THROTTLE, FaultKind.INTERNAL_ERROR, FaultKind.UNAVAILABLE, FaultKind.DROP})


@dataclass(slots=True)
class Fault:
    id: str
    kind: FaultKind
    rate: float
    seed: int
    operations: frozenset[str]
    reservation_sids: frozenset[str] | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    retry_after: int = 1
    after_apply: bool = False
    eligible: int = 0
    fired: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "rate": self.rate,
            "seed": self.seed,
            "operations": sorted(self.operations),
            "reservation_sids": None if self.reservation_sids is None else sorted(self.reservation_sids),
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "retry_after": self.retry_after,
            "after_apply": self.after_apply,
            "eligible": self.eligible,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What the faults decided for one request."""

    delay: float = 0.0
    failure: FaultKind | None = None
    retry_after: int = 1
    after_apply: bool = False
    concurrent_change: bool = False
    # Latency added after an update is applied, before it is answered: a client that gives up
    # (or dies) meanwhile never learns that its update landed.
    delay_after_apply: float = 0.0
    # A status race's draw in [0, 1): which of the changes possible from the current status
    # someone else makes (the store picks it, under its lock); None when no race fired.
    status_race: float | None = None
    # The kinds of the faults that fired, in the order they were added (for the update log).
    fired: tuple[str, ...] = ()


class _Listed(Protocol):
    """What a fault set needs of its faults: an id, and a JSON description."""

    id: str

    def describe(self) -> dict[str, object]: ...


F = TypeVar("F", bound=_Listed)


class FaultSet(Generic[F]):
    """Active faults of one kind, in the order they were added (the TaskRouter API's, the
    callbacks'): ids ``PREFIX1``, ``PREFIX2``, ... from ``parse(id, spec)``."""

    def __init__(self, prefix: str, parse: Callable[[str, Mapping[str, object]], F]) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._prefix = prefix
        self._parse = parse
        # Replaced, never mutated, so ``plan`` can iterate without the lock.
        self._faults: tuple[F, ...] = ()

    def add(self, spec: Mapping[str, object]) -> F:
        """Add a fault from its JSON description; raises :class:`InvalidParameter` when it is wrong."""
        fault = self._parse(f"{self._prefix}{next(self._ids)}", spec)
        with self._lock:
            self._faults = (*self._faults, fault)
        return fault

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            kept = tuple(fault for fault in self._faults if fault.id != fault_id)
            removed = len(kept) != len(self._faults)
            self._faults = kept
        return removed

    def clear(self) -> None:
        with self._lock:
            self._faults = ()

    def describe(self) -> list[dict[str, object]]:
        return [fault.describe() for fault in self._faults]


class FaultInjector(FaultSet[Fault]):
    """The TaskRouter API's active faults."""

    def __init__(self) -> None:
        super().__init__("FT", _fault_from_spec)

    def plan(self, operation: str, sid: str | None) -> Plan | None:
        """Decide this request's faults, or None when none applies (the common, fast case)."""
        faults = self._faults
        if not faults:
            return None
        delay = delay_after_apply = 0.0
        failure: Fault | None = None
        concurrent_change = False
        status_race: float | None = None
        fired: list[str] = []
        for fault in faults:
            if operation not in fault.operations:
                continue
            if fault.reservation_sids is not None and sid not in fault.reservation_sids:
                continue
            fault.eligible += 1
            if fault.rng.random() >= fault.rate:
                continue
            fault.fired += 1
            fired.append(f"{fault.kind}_after_apply" if fault.after_apply else str(fault.kind))
            if fault.kind is FaultKind.LATENCY:
                added = (fault.latency_ms + fault.rng.uniform(0.0, fault.jitter_ms)) / 1000.0
                if fault.after_apply:
                    delay_after_apply += added
                else:
                    delay += added
            elif fault.kind is FaultKind.CONFLICT_STORM:
                concurrent_change = True
            elif fault.kind is FaultKind.STATUS_RACE:
                draw = fault.rng.random()
                status_race = draw if status_race is None else status_race
            elif failure is None:
                failure = fault
        if not fired:
            return None
        return Plan(
            delay=delay,
            failure=None if failure is None else failure.kind,
            retry_after=1 if failure is None else failure.retry_after,
            after_apply=failure is not None and failure.after_apply,
            concurrent_change=concurrent_change,
            delay_after_apply=delay_after_apply,
            status_race=status_race,
            fired=tuple(fired),
        )


# Faults that may strike after an update was applied (the update lands, its answer does not).
_AFTER_APPLY_KINDS = frozenset({FaultKind.DROP, FaultKind.LATENCY})
# Faults that change the reservation under an update, so they make sense on updates only.
_UPDATE_ONLY_KINDS = frozenset({FaultKind.CONFLICT_STORM, FaultKind.STATUS_RACE})


def _fault_from_spec(fault_id: str, spec: Mapping[str, object]) -> Fault:
    known = {
        "kind",
        "rate",
        "seed",
        "operations",
        "reservation_sids",
        "latency_ms",
        "jitter_ms",
        "retry_after",
        "after_apply",
    }
    unknown = sorted(set(spec) - known)
    if unknown:
        raise InvalidParameter(unknown[0], f"Unknown fault field {unknown[0]!r}")
    try:
        kind = FaultKind(str(spec.get("kind")))
    except ValueError:
        allowed = ", ".join(kind.value for kind in FaultKind)
        raise InvalidParameter("kind", f"Fault kind must be one of {allowed}") from None
    rate = _number(spec, "rate", 1.0)
    if not 0.0 <= rate <= 1.0:
        raise InvalidParameter("rate", "Fault rate must be between 0 and 1")
    default_operations = ("update",) if kind in _UPDATE_ONLY_KINDS else OPERATIONS
    operations = frozenset(_strings(spec, "operations") or default_operations)
    if not operations <= set(OPERATIONS):
        raise InvalidParameter("operations", f"Fault operations must be among {', '.join(OPERATIONS)}")
    if kind in _UPDATE_ONLY_KINDS and operations != {"update"}:
        raise InvalidParameter("operations", f"A {kind} fault applies to updates only")
    sids = _strings(spec, "reservation_sids")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidParameter("seed", "Fault seed must be an integer")
    after_apply = spec.get("after_apply", False)
    if not isinstance(after_apply, bool) or (after_apply and kind not in _AFTER_APPLY_KINDS):
        raise InvalidParameter("after_apply", "after_apply is a boolean, for drop and latency faults only")
    retry_after = _number(spec, "retry_after", 1)
    latency_ms, jitter_ms = _number(spec, "latency_ms", 0.0), _number(spec, "jitter_ms", 0.0)
    if min(latency_ms, jitter_ms, retry_after) < 0:
        raise InvalidParameter("latency_ms", "latency_ms, jitter_ms and retry_after cannot be negative")
    return Fault(
        id=fault_id,
        kind=kind,
        rate=rate,
        seed=seed,
        operations=operations,
        reservation_sids=None if sids is None else frozenset(sids),
        latency_ms=latency_ms,
        jitter_ms=jitter_ms,
        retry_after=int(retry_after),
        after_apply=after_apply,
    )


def _number(spec: Mapping[str, object], name: str, default: float) -> float:
    value = spec.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameter(name, f"Fault field {name!r} must be a number")
    return float(value)


def _strings(spec: Mapping[str, object], name: str) -> list[str] | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidParameter(name, f"Fault field {name!r} must be a list of strings")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise InvalidParameter(name, f"Fault field {name!r} must be a list of strings")
    return items
