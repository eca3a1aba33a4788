"""After the run: read the ledger, the emulator and the dead-letter queue, and check nothing was lost."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from kombu.connection import Connection

from workers.broker.topology import (
    ACTION_ID_HEADER,
    DEAD_LETTER_QUEUE_NAME,
    OUTCOME_HEADER,
    REASON_HEADER,
    REJECT_CODE_HEADER,
    dead_letter_queue,
)
from workers.core.planner import Outcome
from workers.ledger.models import EventKind, LedgerRow
from workers.ledger.reader import LedgerReader
from workers.testing.demo.lanes import Lane
from workers.testing.demo.results import Check, Result
from workers.testing.demo.scenario import Scenario
from workers.testing.emulator.admin import EmulatorAdmin, TransitionInfo

POLL_INTERVAL = 0.1
DEAD_LETTER_WAIT = 10.0
HISTORY_WAIT = 10.0


def _all_events(ledger: LedgerReader) -> list[LedgerRow]:
    events: list[LedgerRow] = []
    after = None
    while True:
        page = ledger.history(after=after, limit=1000)
        events.extend(page)
        if len(page) < 1000:
            return events
        after = page[-1].cursor


def _settled_history(ledger: LedgerReader, expected_outcome_rows: int) -> list[LedgerRow]:
    """The whole ledger, once every outcome row is below the read horizon (or after a wait)."""
    deadline = time.monotonic() + HISTORY_WAIT
    while True:
        events = _all_events(ledger)
        rows = sum(1 for e in events if e.settles)
        if rows >= expected_outcome_rows or time.monotonic() > deadline:
            return events
        time.sleep(POLL_INTERVAL)


def inspect(
    result: Result,
    scenario: Scenario,
    lanes: list[Lane],
    ledger: LedgerReader,
    admin: EmulatorAdmin,
    broker_url: str,
) -> None:
    events = _settled_history(ledger, sum(1 for s in result.sent if s.outcome is not None))
    for event in events:
        if event.settles and event.action_id is not None:
            result.outcome_rows[event.action_id] += 1
        if event.kind == EventKind.CONFLICT:
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

    Waits up to ``DEAD_LETTER_WAIT`` seconds for ``expected`` of them (a dead letter is published
    just after its outcome is recorded), counting without touching them, then reads them once:
    every read returns them to the queue with one more delivery on their count.
    """
    with Connection(broker_url) as connection:
        channel = connection.channel()
        queue = dead_letter_queue()(channel)
        queue.declare()
        deadline = time.monotonic() + DEAD_LETTER_WAIT
        while queue.queue_declare(passive=True).message_count < expected and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        found: list[dict[str, Any]] = []
        while (message := channel.basic_get(DEAD_LETTER_QUEUE_NAME, no_ack=False)) is not None:
            headers = dict(message.headers or {})
            wanted = (ACTION_ID_HEADER, OUTCOME_HEADER, REJECT_CODE_HEADER, REASON_HEADER)
            found.append({name: headers.get(name) for name in wanted})
        channel.close()  # the messages go back to the queue, unacknowledged
        return found


def _etag(value: str | None) -> str | None:
    if value is None:
        return None
    return value.removeprefix("W/").strip('"')


def compare_transitions(
    events: list[LedgerRow], log: list[TransitionInfo], current: Mapping[str, str]
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
