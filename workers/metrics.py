"""Prometheus metrics of the workers, and the HTTP server that exposes them.

Measured at the seams, never inside the protocol: the TaskRouter gateway times its own calls
(and counts 412s), the ledger times its writes, the apply task counts outcomes, runs, retries,
ledger errors and queue lag, and every publish to ``reservations.dead`` is counted where it
happens. Names and labels use the ledger's words (``workers.core.vocabulary``).

``WORKER_METRICS_PORT`` (``[host:]port``; unset: no server) makes each worker process serve
``/metrics`` once it consumes (``worker_ready``). With the threads pool (what we deploy) the
tasks run in that process, so the process-local registry is the whole truth. With the prefork
pool the tasks run in child processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
private to the worker (prometheus_client's multiprocess mode: each process writes its values to
files there and the server in the main process adds them up); without it a prefork worker refuses
to serve numbers that would leave out every task.

Hot path: one dict lookup per labelled observation (:class:`_Children` keeps the ``.labels()``
children), no allocation of our own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
)
from prometheus_client.exposition import ThreadingWSGIServer

from workers.health import Check, wsgi_routes

logger = logging.getLogger(__name__)

PORT_VARIABLE = "WORKER_METRICS_PORT"
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

ACTIONS = Counter(
    "reservations_actions",
    "Runs of the apply task that ended with this outcome (a duplicate delivery of a settled action"
    " counts again, with the outcome it already had)",
    ["outcome"],
)
RETRIES = Counter(
    "reservations_retries", "Runs of the apply task that ended in a delayed retry (429, 5xx, lasting 412s)"
)
RUNS = Histogram(
    "reservations_action_runs",
    "The run (1, then 2 after a retry, ...) in which an action reached its outcome",
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
)
CONFLICTS = Counter("reservations_conflicts", "HTTP 412 answers from TaskRouter: the If-Match ETag was stale")
TASKROUTER_SECONDS = Histogram(
    "reservations_taskrouter_request_duration_seconds",
    "TaskRouter calls by endpoint (fetch, update) and HTTP status (or timeout, connection_error)",
    ["endpoint", "http_status"],
)
LEDGER_SECONDS = Histogram(
    "reservations_ledger_write_duration_seconds",
    "Ledger writes (one transaction each) by named query, failed ones included",
    ["query"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEDGER_ERRORS = Counter(
    "reservations_ledger_errors",
    "Runs of the apply task that the ledger failed (down, refused, or the reservation's lock busy)",
)
QUEUE_LAG = Histogram(
    "reservations_queue_lag_seconds",
    "From the apply message's publish (its published_at header, the publisher's clock) to the start"
    " of its first run; retries and redeliveries are not counted",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
DEAD_LETTERS = Counter(
    "reservations_dead_letters",
    "Messages published to reservations.dead, by outcome (rejected_input, failed, dead_lettered)",
    ["outcome"],
)

EVENTS = Counter(
    "reservations_events",
    "TaskRouter event deliveries by channel (callback, stream, reconcile) and result: recorded (a new"
    " transition), duplicate (the ledger held it already), ignored (not a reservation event, or one"
    " without a status), refused (403: signature or credentials), invalid (400), unavailable (503)",
    ["channel", "result"],
)
EVENT_DELAY = Histogram(
    "reservations_event_delay_seconds",
    "From the event's time at TaskRouter (TimestampMs) to its transition committed in the ledger",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
# The account-wide concurrency governor (workers.taskrouter.governor) and what TaskRouter says of
# the account's limits. Gauges add up across a prefork worker's processes where that makes sense.
TASKROUTER_IN_FLIGHT = Gauge(
    "reservations_taskrouter_in_flight",
    "TaskRouter calls in flight from this process (under the governor)",
    multiprocess_mode="livesum",
)
GOVERNOR_SHARE = Gauge(
    "reservations_taskrouter_share",
    "Slots of the account-wide budget this process holds (its lease)",
    multiprocess_mode="livesum",
)
GOVERNOR_BUDGET = Gauge(
    "reservations_taskrouter_budget",
    "The fleet's budget of TaskRouter calls in flight now (shrinks on 429, grows back)",
    multiprocess_mode="max",
)
GOVERNOR_FLEET_IN_FLIGHT = Gauge(
    "reservations_taskrouter_fleet_in_flight",
    "TaskRouter calls in flight across the fleet, as the leases reported them at the last heartbeat",
    multiprocess_mode="max",
)
GOVERNOR_WAITS = Histogram(
    "reservations_taskrouter_slot_wait_seconds",
    "Waits for a slot of the budget (calls admitted at once are not counted)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
GOVERNOR_TIMEOUTS = Counter(
    "reservations_taskrouter_slot_timeouts",
    "Calls that found no slot in TASKROUTER_SLOT_WAIT: nothing was sent, the action is retried later",
)
THROTTLED = Counter("reservations_taskrouter_throttled", "HTTP 429 answers from TaskRouter")
TWILIO_CONCURRENT_REQUESTS = Gauge(
    "reservations_taskrouter_concurrent_requests",
    "The account's requests in flight as TaskRouter last reported them (Twilio-Concurrent-Requests)",
    multiprocess_mode="max",
)
TWILIO_RATE_LIMIT = Gauge(
    "reservations_taskrouter_rate_limit",
    "X-Rate-Limit-Limit as TaskRouter last sent it",
    multiprocess_mode="mostrecent",
)
TWILIO_RATE_REMAINING = Gauge(
    "reservations_taskrouter_rate_remaining",
    "X-Rate-Limit-Remaining as TaskRouter last sent it",
    multiprocess_mode="mostrecent",
)


class _Children:
    """A labelled metric's children by label values: ``.labels()`` once per combination."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            # A race only makes two threads ask prometheus_client for the same child.
            child = self._children[values] = self._metric.labels(*values)
        return child


_actions = _Children(ACTIONS)
_taskrouter = _Children(TASKROUTER_SECONDS)
_ledger = _Children(LEDGER_SECONDS)
_dead_letters = _Children(DEAD_LETTERS)
_events = _Children(EVENTS)


def outcome(name: str, run: int) -> None:
    """An apply run ended with outcome ``name`` in run ``run``."""
    _actions(name).inc()
    RUNS.observe(run)


def taskrouter_call(endpoint: str, http_status: str, started: float) -> None:
    """A TaskRouter call that began at ``started`` (``time.perf_counter()``) ended with ``http_status``."""
    _taskrouter(endpoint, http_status).observe(time.perf_counter() - started)
    if http_status == "412":
        CONFLICTS.inc()


def governor_wait(seconds: float | None) -> None:
    """A call waited ``seconds`` for a slot, or gave up (None)."""
    if seconds is None:
        GOVERNOR_TIMEOUTS.inc()
    else:
        GOVERNOR_WAITS.observe(seconds)


def governor_lease(granted: int, budget: int, fleet_in_flight: int) -> None:
    GOVERNOR_SHARE.set(granted)
    GOVERNOR_BUDGET.set(budget)
    GOVERNOR_FLEET_IN_FLIGHT.set(fleet_in_flight)


def taskrouter_limits(concurrent: float | None, limit: float | None, remaining: float | None) -> None:
    """What TaskRouter's answer said of the account's limits (None: that header was absent)."""
    if concurrent is not None:
        TWILIO_CONCURRENT_REQUESTS.set(concurrent)
    if limit is not None:
        TWILIO_RATE_LIMIT.set(limit)
    if remaining is not None:
        TWILIO_RATE_REMAINING.set(remaining)


def ledger_write(query: str, started: float) -> None:
    _ledger(query).observe(time.perf_counter() - started)


def dead_letter(outcome_name: str) -> None:
    _dead_letters(outcome_name).inc()


def event(channel: str, result: str, count: int = 1) -> None:
    """``count`` event deliveries on ``channel`` ended with ``result``."""
    _events(channel, result).inc(count)


def event_delay(seconds: float) -> None:
    EVENT_DELAY.observe(max(0.0, seconds))


def queue_lag(published_at: object) -> None:
    """Observe the lag of a message published at ``published_at`` (seconds since the epoch)."""
    if isinstance(published_at, int | float) and not isinstance(published_at, bool):
        QUEUE_LAG.observe(max(0.0, time.time() - published_at))


# -- the server ----------------------------------------------------------------------------------


def parse_address(value: str) -> tuple[str, int]:
    """``9808`` (every interface) or ``127.0.0.1:9808``."""
    host, _, port = value.strip().rpartition(":")
    return host or "0.0.0.0", int(port)  # noqa: S104 - Prometheus scrapes from another container


def registry(multiprocess_dir: str | None) -> CollectorRegistry:
    """This process's registry, or in multiprocess mode the sum over every process's files."""
    if multiprocess_dir:
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return collected
    return REGISTRY


def serve(
    address: str | None,
    pool: object = None,
    multiprocess_dir: str | None = None,
    ready: Callable[[], list[Check]] | None = None,
) -> tuple[str, int] | None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` (``ready``'s checks) at ``address``
    (``WORKER_METRICS_PORT``), if any, in a daemon thread; the address served. Other paths: 404."""
    if not address:
        return None
    if _is_prefork(pool) and not multiprocess_dir:
        logger.error(
            "%s is set but the pool is prefork: the tasks' metrics live in the child processes;"
            " set %s to an empty directory (prometheus_client's multiprocess mode). No metrics served.",
            PORT_VARIABLE,
            MULTIPROCESS_VARIABLE,
        )
        return None
    host, port = parse_address(address)
    routes = wsgi_routes(make_wsgi_app(registry(multiprocess_dir)), ready or (lambda: []))
    server = make_server(host, port, routes, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    logger.info("serving /metrics, /healthz and /readyz on http://%s:%d", host, port)
    return host, server.server_port


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _is_prefork(pool: object) -> bool:
    return pool is not None and "prefork" in type(pool).__module__
