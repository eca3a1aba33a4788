"""The account-wide TaskRouter concurrency budget, as pure functions (design doc, "Configuration").

Twilio refuses requests beyond an account's concurrency limit (HTTP 429, error 20429). The
fleet shares one budget of requests in flight; this module decides, with no I/O:

- how big the fleet's budget is now (:class:`Budget`, additive increase and multiplicative
  decrease, as TCP does: a 429 shrinks it at once, quiet periods grow it back one slot at a
  time, and ``Retry-After`` holds it still until it has passed);
- how the budget is split between the worker processes that want some of it (:func:`fair_shares`,
  max-min fairness over what each one asked for), and how much one process may take now without
  the fleet's total ever exceeding the budget (:func:`grant`).

The mechanism that shares these numbers across processes and hosts lives at the edge
(``workers.taskrouter.governor`` and ``workers.ledger.leases``); time comes in as seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """How the fleet's budget moves.

    ``ceiling``: what the fleet may use at most (the account's limit less the share reserved for
    other applications); ``floor``: it never shrinks below this; ``decrease``: the factor a 429
    applies; ``increase``: slots added per quiet ``interval``; ``cooldown``: after a decrease,
    further 429s (answers to requests already in flight) do not shrink it again for this long.
    """

    ceiling: int
    floor: int = 1
    decrease: float = 0.75
    increase: float = 1.0
    interval: float = 1.0
    cooldown: float = 2.0

    def __post_init__(self) -> None:
        if self.ceiling < 1 or not 1 <= self.floor <= self.ceiling:
            raise ValueError("the budget needs 1 <= floor <= ceiling")
        if not 0.0 < self.decrease < 1.0:
            raise ValueError("the decrease factor must be between 0 and 1")
        if self.increase <= 0 or self.interval <= 0 or self.cooldown < 0:
            raise ValueError("increase and interval must be positive, cooldown not negative")


@dataclass(frozen=True, slots=True)
class Budget:
    """The fleet's budget as of ``updated_at``: ``current`` slots (fractional while it grows),
    the time of the last decrease, and a ``Retry-After`` hold (no growth before ``hold_until``)."""

    current: float
    updated_at: float
    decreased_at: float | None = None
    hold_until: float = 0.0

    @classmethod
    def initial(cls, policy: BudgetPolicy, now: float) -> Budget:
        return cls(float(policy.ceiling), now)

    @property
    def slots(self) -> int:
        """Whole slots: a budget of 7.6 lets 7 requests fly."""
        return max(1, math.floor(self.current + 1e-9))

    def after(
        self, policy: BudgetPolicy, now: float, throttled: int = 0, retry_after: float | None = None
    ) -> Budget:
        """The budget once ``throttled`` 429s (and the longest ``Retry-After`` among them) were
        reported at ``now``. Time running backwards (another host's clock) counts as no time."""
        current = min(self.current, float(policy.ceiling))  # the ceiling may have been lowered
        hold_until = self.hold_until
        if retry_after is not None:
            hold_until = max(hold_until, now + retry_after)
        cooling = self.decreased_at is not None and now - self.decreased_at < policy.cooldown
        if throttled > 0:
            if cooling:
                return replace(
                    self, current=current, updated_at=max(now, self.updated_at), hold_until=hold_until
                )
            shrunk = max(float(policy.floor), current * policy.decrease)
            return Budget(shrunk, max(now, self.updated_at), now, hold_until)
        if cooling or now < hold_until:
            return Budget(current, max(now, self.updated_at), self.decreased_at, hold_until)
        # Growth counts from the end of the cooldown and of the hold, never across them.
        quiet_since = max(self.updated_at, hold_until)
        if self.decreased_at is not None:
            quiet_since = max(quiet_since, self.decreased_at + policy.cooldown)
        elapsed = max(0.0, now - quiet_since)
        grown = min(float(policy.ceiling), current + policy.increase * elapsed / policy.interval)
        return Budget(grown, max(now, self.updated_at), self.decreased_at, hold_until)


@dataclass(frozen=True, slots=True)
class Report:
    """What one process tells the fleet at a heartbeat."""

    holder: str
    demand: int  # the most requests it had in flight or waiting since its last heartbeat
    in_flight: int  # in flight now (its lease never records less)
    throttled: int = 0  # 429s since its last heartbeat
    retry_after: float | None = None  # the longest Retry-After among them
    # The slots it may fill until it has applied this heartbeat's answer (its lease never records
    # less: a share shrinks at the process only after the answer, so the fleet must not hand the
    # difference to another process before then).
    limit: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """What the fleet granted one process: ``granted`` slots out of ``budget`` (the fleet's, now),
    with ``fleet_in_flight`` requests in flight across ``holders`` live processes, and the
    holders whose leases had expired (their share is free again)."""

    granted: int
    budget: int
    fleet_in_flight: int
    holders: int
    expired: tuple[str, ...] = ()


def fair_shares(budget: int, demands: Mapping[str, int]) -> dict[str, int]:
    """Split ``budget`` slots between holders by max-min fairness over their ``demands``.

    Nobody gets more than it asked for; what a small demand leaves goes to the larger ones; the
    slots that do not divide evenly go to the holders first in name order (every process computes
    the same split from the same rows). The shares never add up to more than ``budget``.
    """
    shares = dict.fromkeys(demands, 0)
    left = max(0, budget)
    hungry = sorted(name for name, demand in demands.items() if demand > 0)
    while left > 0 and hungry:
        each = left // len(hungry)
        if each == 0:
            # Fewer slots than holders still hungry (all of which hold the same): one each, in order.
            for name in hungry[:left]:
                shares[name] += 1
            break
        for name in hungry:
            take = min(each, demands[name] - shares[name])
            shares[name] += take
            left -= take
        hungry = [name for name in hungry if shares[name] < demands[name]]
    return shares


def grant(budget: int, holder: str, demands: Mapping[str, int], held_by_others: int) -> int:
    """How many slots ``holder`` may hold now: its fair share, but never more than the budget
    leaves beside what the others hold (they give back their excess at their next heartbeat)."""
    share = fair_shares(budget, demands).get(holder, 0)
    return max(0, min(share, budget - held_by_others))
