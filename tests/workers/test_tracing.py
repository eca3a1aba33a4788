"""Tracing through a real worker (issue 17): a producer's ``traceparent`` is continued by the intake,
the apply task, the TaskRouter call (which carries it on to TaskRouter) and the ledger writes, in
one trace exported over OTLP by the SDK to a collector the test runs, and every ledger row of the
action carries its trace id; and per-action INFO lines at Celery's default level (the README's
worker command)."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator

import pytest

from tests.intake.test_intake_end_to_end import addressed
from tests.intake.wire import publish_raw
from tests.support.e2e import Events, wait_for_outcome
from tests.support.otlp import Collector, ReceivedSpan
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

pytestmark = pytest.mark.acceptance

SERVICE = "reservation-workers-under-test"


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture(scope="module")
def traced_worker(worker_env: dict[str, str], collector: Collector) -> Iterator[WorkerProcess]:
    env = {
        **worker_env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,  # opts in (OTEL_TRACES_EXPORTER unset)
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export at once, not every 5 s
        "LOG_FORMAT": "json",
    }
    # No --loglevel: Celery's default, WARNING, as the README starts a worker.
    with WorkerProcess(env, concurrency=4, loglevel=None) as process:
        yield process


def publish_traced(broker_url: str, message: dict[str, object], traceparent: object) -> None:
    publish_raw(
        broker_url,
        json.dumps(message).encode(),
        routing_key=f"action.{message['action']}",
        headers={"traceparent": traceparent, "tracestate": "producer=routing-service"},
    )


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (found,) = [span for span in spans if span.name == name]
    return found


def test_a_producers_trace_runs_through_intake_task_taskrouter_and_ledger(
    traced_worker: WorkerProcess,
    collector: Collector,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
    events: Events,
) -> None:
    reservation = admin.create_reservation()
    message = addressed("accept", reservation)
    action_id = uuid.UUID(message["action_id"])
    trace_id, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    publish_traced(broker_url, message, f"00-{trace_id}-{producer_span}-01")
    assert wait_for_outcome(ledger, action_id).outcome == "applied"

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {span.name for span in spans if span.trace_id == trace_id}
        return {"intake", "POST", "ledger record_step", "ledger record_transition"} <= names

    spans = [span for span in collector.wait_for(complete) if span.trace_id == trace_id]
    intake, update = one(spans, "intake"), one(spans, "POST")
    # One trace, one chain: producer -> intake -> (the apply task, when the intake hands the run
    # over, else the intake applies it itself) -> TaskRouter call and ledger writes.
    assert intake.parent_span_id == producer_span
    handed = [span for span in spans if span.name == "apply"]
    apply = handed[0] if handed else intake
    assert apply.parent_span_id in (intake.span_id, producer_span)
    assert update.parent_span_id == apply.span_id
    writes = [span for span in spans if span.name in ("ledger record_step", "ledger record_transition")]
    assert {span.parent_span_id for span in writes} == {apply.span_id}  # the intent, the transition
    received = [span for span in spans if span.name == "ledger receive"]
    assert intake.span_id in {span.parent_span_id for span in received}  # the intake's write
    assert {span.service for span in spans} == {SERVICE}
    # The ledger's words as attributes; OpenTelemetry's conventions beside them.
    assert intake.attributes["action_id"] == apply.attributes["action_id"] == str(action_id)
    assert apply.attributes["reservation_sid"] == reservation.sid
    assert update.attributes["http.request.method"] == "POST"
    assert update.attributes["http.response.status_code"] == 200
    assert reservation.sid in update.attributes["url.full"]
    # TaskRouter received the trace context of the call itself.
    (sent,) = [entry for entry in admin.updates(reservation.sid) if entry.answer == 200]
    assert sent.traceparent == f"00-{trace_id}-{update.span_id}-01"
    # Per-action INFO lines at Celery's default level, in the ledger's words.
    lines = [json.loads(line) for line in traced_worker.log().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line.get("action_id") == str(action_id)]
    assert {line["level"] for line in ours} == {"INFO"}
    assert any(
        line.get("outcome") == "applied" and line["reservation_sid"] == reservation.sid for line in ours
    )
    # Every ledger row of the action carries the producer's trace id.
    rows = events(action_id)
    assert [row.kind for row in rows] == ["received", "intent", "transition"]
    assert {row.trace_id for row in rows} == {trace_id}


HOSTILE: list[object] = [
    "00-not-a-trace-01",
    "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # the all-zero ids W3C calls invalid
    "x" * 10_000,
    b"\xff" * 55,  # bytes that are no text
    12345,
]


def test_a_hostile_traceparent_starts_a_new_trace_and_the_action_is_applied(
    traced_worker: WorkerProcess,
    collector: Collector,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
) -> None:
    action_ids = []
    for traceparent in HOSTILE:
        message = addressed("accept", admin.create_reservation())
        action_ids.append(message["action_id"])
        publish_traced(broker_url, message, traceparent)
    for action_id in action_ids:
        assert wait_for_outcome(ledger, uuid.UUID(action_id)).outcome == "applied"

    def traced(action_id: str, name: str, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.name == name and s.attributes.get("action_id") == action_id]

    spans = collector.wait_for(lambda spans: all(traced(a, "intake", spans) for a in action_ids))
    for action_id in action_ids:
        (intake,) = traced(action_id, "intake", spans)
        assert intake.parent_span_id == ""  # a root: nothing of the hostile header was taken
