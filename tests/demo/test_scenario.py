"""The demo's scenario is pure: decided by its seed, covering the paths the demo is there to show."""

from __future__ import annotations

import random

import pytest

from workers.core.planner import Outcome
from workers.testing.demo.scenario import KINDS, Publish, Race, build, tame_fault_seed


def test_same_seed_same_scenario_and_another_seed_another() -> None:
    assert build(40, seed=3) == build(40, seed=3)
    assert build(40, seed=3) != build(40, seed=4)


def test_a_short_run_still_races_retries_and_dead_letters() -> None:
    scenario = build(8, seed=1)
    names = {script.name for script in scenario.scripts}
    assert set(KINDS[:8]) <= names
    assert any("412" in name for name in names)
    assert any(script.fault is not None and script.fault.kind == "throttle" for script in scenario.scripts)
    expected = {step.expected for s in scenario.scripts for step in s.steps if isinstance(step, Publish)}
    assert {Outcome.APPLIED, Outcome.ALREADY_APPLIED, Outcome.INVALID_TRANSITION} <= expected
    assert {Outcome.DEAD_LETTERED, Outcome.FAILED} <= expected
    assert {bad.reject_code for bad in scenario.invalid} == {"missing_field", "invalid_json"}


def test_every_kind_appears_in_a_default_run_and_scripts_end_with_a_publish() -> None:
    scenario = build(40, seed=7)
    assert len(scenario.scripts) == 42  # plus the dead-lettered and the unknown reservation
    assert set(KINDS) <= {script.name for script in scenario.scripts}
    for script in scenario.scripts:
        # The ledger must see each reservation last, so that it can agree with TaskRouter.
        assert isinstance(script.steps[-1], Publish)
        assert all(
            step.verb in {"accept", "wrapup", "timeout", "reject"}
            for step in script.steps
            if isinstance(step, Race)
        )


def test_actions_count_each_action_once() -> None:
    scenario = build(14, seed=2)
    published = sum(1 for s in scenario.scripts for step in s.steps if isinstance(step, Publish))
    assert scenario.actions == published + 1  # the invalid message with an action_id


def test_tame_fault_seed_fails_first_and_never_runs_out_of_retries() -> None:
    rng = random.Random(5)
    for _ in range(20):
        seed = tame_fault_seed(rng, 0.5)
        draw = random.Random(seed)
        fails = [draw.random() < 0.5 for _ in range(12)]
        assert fails[0]
        assert "FFF" not in "".join("F" if failed else "." for failed in fails)


def test_at_least_one_reservation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build(0, seed=1)
