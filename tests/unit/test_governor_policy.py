"""The governor's pure policy: max-min fair shares, grants that never overdraw the budget, AIMD."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.core.governor import Budget, BudgetPolicy, fair_shares, grant
from workers.taskrouter.governor import Slots, budget_ceiling, default_floor

demands = st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 80), max_size=8)


@given(st.integers(0, 200), demands)
def test_shares_never_exceed_the_budget_nor_a_demand(budget: int, asked: dict[str, int]) -> None:
    shares = fair_shares(budget, asked)
    assert set(shares) == set(asked)
    assert sum(shares.values()) <= budget
    assert all(0 <= shares[name] <= asked[name] for name in asked)


@given(st.integers(0, 200), demands)
def test_shares_are_max_min_fair_and_leave_nothing_idle(budget: int, asked: dict[str, int]) -> None:
    shares = fair_shares(budget, asked)
    # Nothing is left over while someone still wants more.
    if any(shares[n] < asked[n] for n in asked):
        assert sum(shares.values()) == budget
    # Whoever got less than it asked for got at least as much as anyone else, less the one odd slot.
    for name in asked:
        if shares[name] < asked[name]:
            assert all(shares[name] >= shares[other] - 1 for other in asked)


def test_shares_split_evenly_and_give_a_small_demand_what_it_asks() -> None:
    assert fair_shares(20, {"a": 32, "b": 32, "c": 32}) == {"a": 7, "b": 7, "c": 6}
    assert fair_shares(20, {"a": 2, "b": 32, "c": 32}) == {"a": 2, "b": 9, "c": 9}
    assert fair_shares(20, {"a": 0, "b": 32}) == {"a": 0, "b": 20}


@given(st.integers(1, 100), demands, st.integers(0, 150))
def test_a_grant_never_takes_what_others_hold(budget: int, asked: dict[str, int], held: int) -> None:
    asked = {**asked, "me": asked.get("me", 5)}
    granted = grant(budget, "me", asked, held)
    assert 0 <= granted <= max(0, budget - held)
    assert granted <= fair_shares(budget, asked)["me"]


@given(
    st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3), st.none() | st.floats(0, 30)), max_size=40),
    st.integers(1, 100),
)
def test_the_budget_stays_between_its_floor_and_ceiling(
    steps: list[tuple[float, int, float | None]], ceiling: int
) -> None:
    policy = BudgetPolicy(ceiling, floor=default_floor(ceiling))
    budget, now = Budget.initial(policy, 0.0), 0.0
    for elapsed, throttled, retry_after in steps:
        now += elapsed
        budget = budget.after(policy, now, throttled, retry_after)
        assert policy.floor <= budget.current <= policy.ceiling
        assert 1 <= budget.slots <= policy.ceiling


def test_a_429_shrinks_the_budget_once_per_cooldown_and_quiet_grows_it_back() -> None:
    policy = BudgetPolicy(20, floor=5, decrease=0.5, increase=1.0, interval=1.0, cooldown=2.0)
    budget = Budget.initial(policy, 100.0)
    budget = budget.after(policy, 100.0, throttled=3)
    assert budget.slots == 10
    # The answers to requests that were already in flight do not shrink it again.
    assert budget.after(policy, 101.0, throttled=5).slots == 10
    assert budget.after(policy, 102.5, throttled=1).slots == 5
    # Quiet: one slot per interval once the cooldown has passed, up to the ceiling.
    budget = budget.after(policy, 102.0)
    assert budget.slots == 10
    assert budget.after(policy, 105.0).slots == 13
    assert budget.after(policy, 1000.0).slots == 20


def test_retry_after_holds_the_budget_still_until_it_has_passed() -> None:
    policy = BudgetPolicy(20, floor=5, decrease=0.5, cooldown=0.0)
    budget = Budget.initial(policy, 0.0).after(policy, 0.0, throttled=1, retry_after=30.0)
    assert budget.slots == 10
    assert budget.after(policy, 29.0).slots == 10
    assert budget.after(policy, 29.0).after(policy, 35.0).slots == 15


def test_a_lowered_ceiling_applies_at_once() -> None:
    budget = Budget.initial(BudgetPolicy(40), 0.0)
    assert budget.after(BudgetPolicy(10), 1.0).slots == 10


def test_the_ceiling_keeps_the_reserved_share_and_bad_policies_are_refused() -> None:
    assert budget_ceiling(50, 10) == 40
    assert default_floor(40) == 10
    with pytest.raises(ValueError, match="floor"):
        BudgetPolicy(10, floor=11)
    with pytest.raises(ValueError, match="decrease"):
        BudgetPolicy(10, decrease=1.0)


def test_slots_admit_up_to_the_limit_and_wait_a_bounded_time() -> None:
    slots = Slots(2)
    assert slots.acquire(1.0) == 0.0
    assert slots.acquire(1.0) == 0.0
    wake = threading.Event()
    assert slots.acquire(0.01, wake) is None  # full: gives up, never blocks for good
    assert wake.is_set()  # and asked the heartbeat for more
    assert slots.take_demand() == (3, 2, 2)
    assert slots.take_demand() == (2, 2, 2)


def test_a_release_or_a_bigger_share_lets_a_waiter_in() -> None:
    slots = Slots(1)
    assert slots.acquire(1.0) == 0.0
    got: list[float | None] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(30.0)))
    waiter.start()
    while slots.waiting == 0:
        threading.Event().wait(0.001)
    slots.resize(2)
    waiter.join(30)
    assert got
    assert got[0] is not None
    assert slots.in_flight == 2
    slots.release()
    slots.release()
    assert slots.in_flight == 0


def test_slots_admit_nobody_once_their_lease_has_lapsed_until_it_is_renewed() -> None:
    now = [100.0]
    slots = Slots(clock=lambda: now[0])
    slots.resize(3, valid_until=105.0)
    assert slots.acquire(1.0) == 0.0
    now[0] = 105.0  # the lease's time is up: another process may hold this share by now
    assert slots.acquire(0.01) is None
    slots.resize(3, valid_until=110.0)  # renewed
    assert slots.acquire(1.0) == 0.0
    assert slots.in_flight == 2
