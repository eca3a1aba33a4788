"""Replay end to end: a real worker, RabbitMQ, PostgreSQL and the emulator over HTTP.

A mixed run, then the projection rebuilt from the ledger alone; dead-lettered actions redriven
once the emulator's faults are switched off.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.audit.support import eventually
from tests.replay.conftest import cli, json_lines
from tests.support.e2e import action_for, wait_for_outcome
from workers.audit.queries import story
from workers.audit.timeline import timeline
from workers.core.action import ActionKind
from workers.ledger.connector import connect
from workers.ledger.reader import LedgerReader
from workers.replay.redrive import dead_letters
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

pytestmark = pytest.mark.slow


def test_rebuild_equals_the_live_projection_after_a_mixed_run(
    celery_app: Any,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    worker_env: dict[str, str],
) -> None:
    walked = admin.create_reservation()
    already = admin.create_reservation(status="accepted")
    timed_out = admin.create_reservation()
    admin.change(timed_out.sid, "timeout")
    contested = admin.create_reservation()
    admin.add_fault("conflict_storm", rate=0.5, seed=3, reservation_sids=[contested.sid])
    outcomes: dict[str, str] = {}
    for kind in (ActionKind.ACCEPT, ActionKind.WRAPUP, ActionKind.COMPLETE):
        act = action_for(walked, kind)
        celery_app.enqueue(act)
        outcomes[f"walked {kind}"] = wait_for_outcome(ledger, act.action_id).outcome or ""
    others = {
        "already": action_for(already),
        "timed_out": action_for(timed_out),
        "contested": action_for(contested),
    }
    for act in others.values():
        celery_app.enqueue(act)
    for name, act in others.items():
        outcomes[name] = wait_for_outcome(ledger, act.action_id).outcome or ""
    assert outcomes["walked complete"] == "applied"
    assert outcomes["already"] == "already_applied"
    assert outcomes["timed_out"] == "invalid_transition"

    def steps_of(sid: str) -> list[tuple[str | None, str]]:
        return [(s.from_status, s.to_status) for s in timeline(ledger, sid)]

    walk = [("pending", "accepted"), ("accepted", "wrapping"), ("wrapping", "completed")]
    deadline = time.monotonic() + 10
    while steps_of(walked.sid)[-3:] != walk:  # after the first sighting (None -> pending), if any
        assert time.monotonic() < deadline, steps_of(walked.sid)
        time.sleep(0.05)
    emulator_steps = [(t.from_status, t.to_status) for t in admin.transitions(walked.sid)]
    assert steps_of(walked.sid)[-len(emulator_steps) :] == emulator_steps
    assert steps_of(timed_out.sid)[-1][1] == "timeout"

    result = cli(worker_env, "replay", "rebuild")
    assert result.exit_code == 0, result.output
    assert "0 difference(s)" in result.stdout

    # A projection that drifted from the ledger is reported, then corrected with --apply.
    with connect(worker_env["DATABASE_URL"], None) as conn:
        conn.execute(
            "UPDATE ledger.reservations SET status = 'pending' WHERE reservation_sid = %s", [walked.sid]
        )
    drifted = cli(worker_env, "replay", "rebuild")
    assert drifted.exit_code == 1
    assert walked.sid in drifted.stdout
    fixed = cli(worker_env, "replay", "rebuild", "--apply")
    assert fixed.exit_code == 0, fixed.output
    assert cli(worker_env, "replay", "rebuild").exit_code == 0
    state = ledger.reservation(walked.sid)
    assert state is not None
    assert state.status == "completed"

    shown = cli(worker_env, "replay", "timeline", "--reservation", walked.sid, "--format", "json")
    assert [row["to_status"] for row in json_lines(shown)][-3:] == ["accepted", "wrapping", "completed"]


def test_dead_lettered_actions_are_redriven_once_the_faults_are_off(
    celery_app: Any,
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    worker_env: dict[str, str],
    broker_url: str,
) -> None:
    since = datetime.now(UTC).isoformat()
    stuck = admin.create_reservation()
    moved_on = admin.create_reservation()
    admin.add_fault("unavailable", reservation_sids=[stuck.sid, moved_on.sid])
    originals = {"stuck": action_for(stuck), "moved_on": action_for(moved_on)}
    for act in originals.values():
        celery_app.enqueue(act)
    for act in originals.values():
        assert wait_for_outcome(ledger, act.action_id).outcome == "dead_lettered"
    wanted = {act.action_id for act in originals.values()}
    deadline = time.monotonic() + 10
    while True:
        with dead_letters(broker_url) as letters:
            if wanted <= {letter.action_id for letter in letters}:
                break
        assert time.monotonic() < deadline, "the dead letters did not arrive"
        time.sleep(0.1)

    admin.clear_faults()
    admin.change(moved_on.sid, "accept")  # someone else accepted it meanwhile

    dry = cli(worker_env, "replay", "redrive", "--dry-run", "--since", since, "--json")
    assert dry.exit_code == 0, dry.output
    assert {(row["action_id"], row["verdict"]) for row in json_lines(dry)} == {
        (str(a), "would_redrive") for a in wanted
    }
    for act in originals.values():
        record = ledger.action(act.action_id)
        assert record is not None
        assert (record.outcome, record.redrives) == ("dead_lettered", 0)
    assert admin.reservation(stuck.sid).status == "pending"

    done = cli(worker_env, "replay", "redrive", "--since", since, "--json")
    assert done.exit_code == 0, done.output
    copies = {uuid.UUID(row["action_id"]): uuid.UUID(row["new_action_id"]) for row in json_lines(done)}
    assert set(copies) == wanted

    stuck_copy = copies[originals["stuck"].action_id]
    assert wait_for_outcome(ledger, stuck_copy).outcome == "applied"
    assert admin.reservation(stuck.sid).status == "accepted"
    # The reservation that moved on is judged again from what it is now: no blind overwrite.
    assert wait_for_outcome(ledger, copies[originals["moved_on"].action_id]).outcome == "already_applied"

    original = eventually(
        lambda: story(ledger, originals["stuck"].action_id),
        lambda found: found is not None and bool(found.redriven_as),
    )
    assert original is not None
    assert original.redriven_as == [stuck_copy]
    assert original.record.redrives == 1
    redriven = story(ledger, stuck_copy)
    assert redriven is not None
    assert redriven.redrive_of == originals["stuck"].action_id
    assert redriven.record.producer == "redrive"
    assert redriven.record.correlation_id == originals["stuck"].correlation_id
    shown = cli(worker_env, "show", str(stuck_copy), "--format", "json")
    assert json_lines(shown)[0]["redrive_of"] == str(originals["stuck"].action_id)

    # The dead letters are gone, and a second redrive has nothing left to do.
    with dead_letters(broker_url) as letters:
        assert not wanted & {letter.action_id for letter in letters}
    again = cli(worker_env, "replay", "redrive", "--since", since, "--json")
    assert again.exit_code == 0, again.output
    assert json_lines(again) == []
