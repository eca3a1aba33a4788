"""Health over HTTP: ``/healthz`` (the process is alive) and ``/readyz`` (it can do its work),
for the workers' metrics server and for any FastAPI service of ours (the audit API, the events API).

A check is a named verdict (:class:`Check`); ``/readyz`` answers 200 when none failed and 503
otherwise, with every check in the body, so an operator reading the probe sees why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the workers serve health without FastAPI; only the APIs import it
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: ``name`` (configuration, ledger, broker, ...), ``status`` (ok, warn or fail)
    and in ``detail`` what was found or what is wrong, in one line."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<13} {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def ready_answer(checks: Iterable[Check], *, detailed: bool = True) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of ``/readyz`` for ``checks``; without ``detailed``, only
    their names and verdicts (for a port that faces the public: hosts and ports stay in the log)."""
    found = list(checks)
    ready = not any(c.failed for c in found)
    shown = [c.as_dict() if detailed else {"name": c.name, "status": c.status} for c in found]
    return (200 if ready else 503), {"status": "ready" if ready else "not_ready", "checks": shown}


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def wsgi_routes(metrics_app: WsgiApp, ready: Callable[[], list[Check]]) -> WsgiApp:
    """``/metrics`` (``metrics_app``), ``/healthz``, ``/readyz``; every other path is 404."""

    def app(request: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = request.get("PATH_INFO", "")
        body: dict[str, Any]
        if path == "/metrics":
            yield from metrics_app(request, start_response)
            return
        if path == "/healthz":
            status, body = 200, {"status": "ok"}
        elif path == "/readyz":
            status, body = ready_answer(ready())
        else:
            status, body = 404, {"status": "not_found", "paths": ["/metrics", "/healthz", "/readyz"]}
        payload = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(f"{status} {reason}", headers)
        yield payload

    return app


def add_health_routes(app: FastAPI, ready: Callable[[], list[Check]]) -> None:
    """``GET /healthz`` and ``GET /readyz`` on a FastAPI ``app``, unauthenticated like any probe;
    ``/readyz`` shows each check's name and verdict, and logs what a failing one found."""
    from fastapi.responses import JSONResponse

    @app.get("/healthz", tags=["health"], responses={200: {"description": "The process is alive."}})
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # No return annotation FastAPI would resolve (JSONResponse is imported here, not at the top,
    # so that the workers' /readyz does not load FastAPI): the response is built by hand.
    @app.get(
        "/readyz",
        tags=["health"],
        response_model=None,
        responses={
            200: {"description": "Every check passed: {status: ready, checks: [{name, status}]}."},
            503: {"description": "A check failed: the body names it, the log says why."},
        },
    )
    def readyz() -> Any:
        checks = ready()
        for check in checks:
            if check.failed:
                logger.warning("not ready: %s: %s", check.name, check.detail)
        status, body = ready_answer(checks, detailed=False)
        return JSONResponse(body, status_code=status)
