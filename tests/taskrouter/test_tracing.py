"""Tracing in-process, with the OpenTelemetry SDK's ``InMemorySpanExporter``: a producer's
traceparent continued as the intake and the apply task continue it (``workers.tracing``), around
the real applier, the real twilio SDK over HTTP to the emulator, and the real ledger. The whole
path through a real worker process is ``tests/workers/test_tracing.py``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from tests.support.e2e import Events, action_for
from workers import tracing
from workers.apply.applier import ActionApplier, Done
from workers.broker.topology import ACTIONS_QUEUE_NAME, APPLY_QUEUE_NAME
from workers.config import Settings
from workers.ledger.writer import PostgresLedgerWriter
from workers.taskrouter.gateway import TaskRouterGateway
from workers.testing.emulator.admin import EmulatorAdmin


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(exporter, "in-process-test")
    try:
        yield exporter
    finally:
        tracing.stop()  # flushes into ``exporter``, and records nothing after this test
    assert not tracing.enabled()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def parent_of(span: ReadableSpan) -> str:
    assert span.parent is not None, span.name
    return format_span_id(span.parent.span_id)


def own_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format_span_id(span.context.span_id)


def test_the_trace_is_continued_through_taskrouter_and_the_ledger(
    exported: InMemorySpanExporter,
    settings: Settings,
    writer: PostgresLedgerWriter,
    admin: EmulatorAdmin,
    events: Events,
) -> None:
    reservation = admin.create_reservation()
    action = action_for(reservation)
    trace_id, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    with tracing.continued(
        "intake", {"traceparent": f"00-{trace_id}-{producer_span}-01"}, ACTIONS_QUEUE_NAME
    ):
        writer.receive(action)
        handed_on = tracing.headers()  # what hand_to_apply puts in the task message's headers
    assert handed_on["traceparent"].startswith(f"00-{trace_id}-")
    with tracing.continued("apply", handed_on, APPLY_QUEUE_NAME, action_id=str(action.action_id)):
        applier = ActionApplier(writer, TaskRouterGateway.from_settings(settings), settings.retry)
        result = applier.apply_message(action.to_message())
    assert isinstance(result, Done)
    assert result.outcome.value == "applied"
    tracing.flush()
    spans = exported.get_finished_spans()
    assert {format_trace_id(span.context.trace_id) for span in spans if span.context} == {trace_id}
    (intake,), (apply,), (post,) = by_name(spans, "intake"), by_name(spans, "apply"), by_name(spans, "POST")
    assert parent_of(intake) == producer_span
    assert parent_of(apply) == own_id(intake)
    assert parent_of(post) == own_id(apply)
    assert dict(post.attributes or {})["http.response.status_code"] == 200
    writes = [span for span in spans if span.name.startswith("ledger ")]
    assert {parent_of(span) for span in writes} == {own_id(intake), own_id(apply)}
    assert "ledger record_transition" in {span.name for span in writes}
    (sent,) = [entry for entry in admin.updates(reservation.sid) if entry.answer == 200]
    assert sent.traceparent == f"00-{trace_id}-{own_id(post)}-01"
    rows = events(action.action_id)
    assert [row.kind for row in rows] == ["received", "intent", "transition"]
    assert {row.trace_id for row in rows} == {trace_id}


def test_when_off_nothing_is_recorded_or_sent(
    settings: Settings, writer: PostgresLedgerWriter, admin: EmulatorAdmin, events: Events
) -> None:
    assert not tracing.enabled()
    reservation = admin.create_reservation()
    producer = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    with tracing.continued("intake", {"traceparent": producer}, ACTIONS_QUEUE_NAME) as span:
        assert span is None
        assert tracing.headers() == {}
        assert tracing.trace_id() is None
        applier = ActionApplier(writer, TaskRouterGateway.from_settings(settings), settings.retry)
        action = action_for(reservation)
        writer.receive(action)
        result = applier.apply_message(action.to_message())
    assert isinstance(result, Done)
    assert result.outcome.value == "applied"
    assert [entry.traceparent for entry in admin.updates(reservation.sid)] == [None]
    assert {row.trace_id for row in events(action.action_id)} == {None}
