"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables turn it on.

One trace follows an action from its producer to the ledger: a ``traceparent`` (W3C Trace
Context) in the producer's AMQP message headers is continued by the intake's span, carried to the
apply task in the task message's headers, continued by the task's span, whose children are the
TaskRouter HTTP calls (which send ``traceparent`` on to TaskRouter) and the ledger writes; each
ledger row keeps the trace id. Span attributes use the ledger's words (``action_id``,
``reservation_sid``, ``outcome``, ``run``) beside OpenTelemetry's semantic conventions.

:func:`configure` installs the SDK once per process when ``Settings.traces_exporter`` says so
(``workers.config`` reads the variables); the SDK's exporter reads its own (endpoint, headers,
time-out, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, sampler). Until then
every helper here is a no-op that costs one boolean test: nothing is extracted, injected or
recorded. Tracing never fails a message: a malformed or hostile ``traceparent`` starts a new trace.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind

logger = logging.getLogger(__name__)

# What a producer may send: W3C Trace Context's two headers, as AMQP message headers.
HEADERS = ("traceparent", "tracestate")
# A traceparent is 55 characters; tracestate at most 32 members of 256 (W3C's limit is 512 characters
# to propagate): anything longer is not one, and is dropped before any parsing.
MAX_HEADER = 512

_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer = trace.get_tracer("workers")


def enabled() -> bool:
    """Whether this process records spans (``configure`` ran with an exporter)."""
    return _provider is not None


def configure(exporter: str | SpanExporter | None, service_name: str, endpoint: str | None = None) -> bool:
    """Install the SDK with ``exporter`` (``otlp``, ``console``, an exporter such as the SDK's
    ``InMemorySpanExporter`` in tests; None: stay off), once per process,
    before a prefork pool forks (the SDK's span processor restarts its thread in a forked child).
    ``service_name`` is used unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the service;
    ``endpoint`` is where OTLP spans go (``Settings.otlp_traces_endpoint``)."""
    global _provider, _tracer
    if exporter is None:
        return False
    with _lock:
        if _provider is not None:
            return True
        detected = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        resource = detected
        if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = detected.merge(Resource({SERVICE_NAME: service_name}))
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter if isinstance(exporter, SpanExporter) else _exporter(exporter, endpoint)
            )
        )
        if not isinstance(trace.get_tracer_provider(), TracerProvider):  # the API sets it once
            trace.set_tracer_provider(provider)
        _tracer = provider.get_tracer("workers")
        _provider = provider
    logger.info("tracing: spans are exported (%s) as service %s", exporter, resource.attributes[SERVICE_NAME])
    return True


def _exporter(name: str, endpoint: str | None) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


def stop() -> None:
    """Export what is buffered, then record nothing more (tests that configured it in-process)."""
    global _provider
    with _lock:
        if _provider is not None:
            _provider.shutdown()
        _provider = None


def flush() -> None:
    """Export what is still buffered (a worker's warm shutdown; the SDK also flushes at exit)."""
    with _lock:
        if _provider is not None:
            _provider.force_flush()


def carrier_of(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The trace headers of an AMQP message, only where they are text of a plausible length."""
    if not headers:
        return {}
    found: dict[str, str] = {}
    for name in HEADERS:
        value = headers.get(name)
        if isinstance(value, str) and 0 < len(value) <= MAX_HEADER:
            found[name] = value
    return found


def headers() -> dict[str, str]:
    """The current trace context as message or HTTP headers (``traceparent``); empty when off."""
    if not enabled():
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def continued(
    name: str, headers: Mapping[str, Any] | None, queue: str, **attributes: Any
) -> Iterator[Span | None]:
    """The span of processing a message from ``queue``, continuing the trace of its ``headers``
    (a new trace if they hold none): OpenTelemetry's messaging attributes, then ``attributes``."""
    if not enabled():
        yield None
        return
    try:
        parent = propagate.extract(carrier_of(headers))
    except Exception:  # a propagator's bug must not fail a message
        parent = context.Context()
    consumed = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        **attributes,
    }
    with _tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=_clean(consumed)
    ) as span:
        yield span


def client(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Span | None]:
    """A client span (a call to TaskRouter or PostgreSQL), child of the current one; a context
    manager yielding the span, or None when tracing is off."""
    if not enabled():
        return nullcontext(None)
    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=_clean(attributes))


def set_attributes(target: Span | None, **attributes: Any) -> None:
    if target is not None:
        target.set_attributes(_clean(attributes))


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), or None outside a recorded trace."""
    if not enabled():
        return None
    current = trace.get_current_span().get_span_context()
    return trace.format_trace_id(current.trace_id) if current.is_valid else None


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes OpenTelemetry accepts: no None, text for anything not a number or a flag."""
    return {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in attributes.items()
        if value is not None
    }
