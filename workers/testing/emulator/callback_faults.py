"""Deterministic faults on event deliveries: drop, duplicate, delay and reorder a callback.

Like the API's faults (``faults``), each has its own ``random.Random(seed)`` and draws once for
every delivery it is eligible for (its channels, event types and reservation SIDs), so the same
seed and the same event sequence give the same faults; ``limit`` makes a rule explicit ("drop the
first accepted event of this reservation": rate 1, limit 1).

- ``drop``: the delivery is never sent (the event stays in the Events resource, for reconciliation).
- ``duplicate``: sent ``copies`` times (default 2), byte for byte, the same signature and ``Sid``.
- ``delay``: held back ``delay_ms`` without holding up the deliveries behind it, which overtake it.
- ``reorder``: held back until ``hold`` later deliveries (default 1) have been sent (or at most
  ``delay_ms``, default 5 s, when no more come), so it arrives after them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from workers.errors import InvalidParameter
from workers.testing.emulator.faults import FaultSet, _number, _strings

CHANNELS = ("callback", "stream")
DEFAULT_HOLD_MS = 5000.0


class CallbackFaultKind(enum.StrEnum):
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"
    REORDER = "reorder"


@dataclass(slots=True)
class CallbackFault:
    id: str
    kind: CallbackFaultKind
    rate: float
    seed: int
    channels: frozenset[str]
    event_types: frozenset[str] | None = None
    reservation_sids: frozenset[str] | None = None
    limit: int | None = None
    copies: int = 2
    delay_ms: float = 0.0
    hold: int = 1
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
            "channels": sorted(self.channels),
            "event_types": None if self.event_types is None else sorted(self.event_types),
            "reservation_sids": None if self.reservation_sids is None else sorted(self.reservation_sids),
            "limit": self.limit,
            "copies": self.copies,
            "delay_ms": self.delay_ms,
            "hold": self.hold,
            "eligible": self.eligible,
            "fired": self.fired,
        }


@dataclass(frozen=True, slots=True)
class DeliveryPlan:
    """What the faults decided for one delivery."""

    drop: bool = False
    copies: int = 1
    delay: float = 0.0  # seconds, without blocking the deliveries behind it
    hold: int = 0  # later deliveries to wait for (reorder)
    hold_max: float = 0.0  # seconds a held delivery waits at most
    fired: tuple[str, ...] = ()


NO_FAULTS = DeliveryPlan()


class CallbackFaults(FaultSet[CallbackFault]):
    """The active delivery faults, in the order they were added."""

    def __init__(self) -> None:
        super().__init__("CF", _fault_from_spec)

    def plan(self, channel: str, event_type: str, reservation_sid: str) -> DeliveryPlan:
        """Decide one delivery's faults (called once per delivery, in delivery order)."""
        faults = self._faults
        if not faults:
            return NO_FAULTS
        drop, copies, delay, hold, hold_max = False, 1, 0.0, 0, 0.0
        fired: list[str] = []
        with self._lock:
            for fault in faults:
                if channel not in fault.channels:
                    continue
                if fault.event_types is not None and event_type not in fault.event_types:
                    continue
                if fault.reservation_sids is not None and reservation_sid not in fault.reservation_sids:
                    continue
                if fault.limit is not None and fault.fired >= fault.limit:
                    continue
                fault.eligible += 1
                if fault.rng.random() >= fault.rate:
                    continue
                fault.fired += 1
                fired.append(str(fault.kind))
                if fault.kind is CallbackFaultKind.DROP:
                    drop = True
                elif fault.kind is CallbackFaultKind.DUPLICATE:
                    copies = max(copies, fault.copies)
                elif fault.kind is CallbackFaultKind.DELAY:
                    delay += fault.delay_ms / 1000.0
                else:
                    hold = max(hold, fault.hold)
                    hold_max = max(hold_max, (fault.delay_ms or DEFAULT_HOLD_MS) / 1000.0)
        if not fired:
            return NO_FAULTS
        return DeliveryPlan(drop, copies, delay, hold, hold_max, tuple(fired))


_KNOWN_FIELDS = frozenset(
    {
        "kind",
        "rate",
        "seed",
        "channels",
        "event_types",
        "reservation_sids",
        "limit",
        "copies",
        "delay_ms",
        "hold",
    }
)


def _fault_from_spec(fault_id: str, spec: Mapping[str, object]) -> CallbackFault:
    unknown = sorted(set(spec) - _KNOWN_FIELDS)
    if unknown:
        raise InvalidParameter(unknown[0], f"Unknown callback fault field {unknown[0]!r}")
    try:
        kind = CallbackFaultKind(str(spec.get("kind")))
    except ValueError:
        allowed = ", ".join(kind.value for kind in CallbackFaultKind)
        raise InvalidParameter("kind", f"Callback fault kind must be one of {allowed}") from None
    rate = _number(spec, "rate", 1.0)
    if not 0.0 <= rate <= 1.0:
        raise InvalidParameter("rate", "Fault rate must be between 0 and 1")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidParameter("seed", "Fault seed must be an integer")
    channels = frozenset(_strings(spec, "channels") or CHANNELS)
    if not channels <= set(CHANNELS):
        raise InvalidParameter("channels", f"Callback fault channels must be among {', '.join(CHANNELS)}")
    event_types, sids = _strings(spec, "event_types"), _strings(spec, "reservation_sids")
    limit = spec.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InvalidParameter("limit", "limit is a positive integer: how many times the fault fires at most")
    copies, hold = _number(spec, "copies", 2), _number(spec, "hold", 1)
    delay_ms = _number(spec, "delay_ms", 0.0)
    if copies < 2 or hold < 1 or delay_ms < 0 or copies != int(copies) or hold != int(hold):
        raise InvalidParameter("copies", "copies is an integer >= 2, hold an integer >= 1, delay_ms >= 0")
    if kind is CallbackFaultKind.DELAY and delay_ms <= 0:
        raise InvalidParameter("delay_ms", "A delay fault needs delay_ms > 0")
    return CallbackFault(
        id=fault_id,
        kind=kind,
        rate=rate,
        seed=seed,
        channels=channels,
        event_types=None if event_types is None else frozenset(event_types),
        reservation_sids=None if sids is None else frozenset(sids),
        limit=limit,
        copies=int(copies),
        delay_ms=delay_ms,
        hold=int(hold),
    )
