"""Prometheus metrics of our HTTP APIs (the audit API, the events API): requests and their latency.

:func:`instrument` adds an ASGI middleware that counts every request by API, route template (never
the raw path: SIDs in paths and random paths from scanners would make a series each), method and
status, and times it; and serves ``GET /metrics`` (no token, like ``/healthz``: counts and route
templates only, nothing from the ledger). Methods outside HTTP's usual set count as ``other``.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "reservations_http_requests",
    "HTTP requests answered, by API, route template (unmatched: no route), method and status",
    ["api", "handler", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "reservations_http_request_duration_seconds",
    "HTTP requests' time to the last byte of the answer, by API, route template and method",
    ["api", "handler", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


class RequestMetrics:
    """ASGI middleware: counts and times each HTTP request (see the module's docstring)."""

    def __init__(self, app: ASGIApp, api: str) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The router records the matched route in the scope it is handed (this one).
            handler = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            REQUESTS.labels(self.api, handler, method, str(status)).inc()
            REQUEST_SECONDS.labels(self.api, handler, method).observe(time.perf_counter() - started)


def instrument(app: FastAPI, api: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Count and time ``app``'s requests under ``api``, and serve ``GET /metrics``."""
    app.add_middleware(RequestMetrics, api=api)

    @app.get("/metrics", include_in_schema=False)
    def metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
