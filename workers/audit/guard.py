"""What every answer of the audit API gets, whatever the route: credentials in a URL refused, a
strict Content-Security-Policy and its companion headers, and one JSON log line naming the
auditor (``auditor``) whose token made the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from workers.audit import auth

logger = logging.getLogger("workers.audit.access")

# Nothing from anywhere but this server; no inline script or style; no framing; forms post here.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
    " font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
URL_REFUSED = (
    "credentials are not accepted in a URL (proxies, logs and browser history keep URLs):"
    " send Authorization: Bearer <token>, or sign in at /ui/login"
)


def note_auditor(request: Request, name: str) -> None:
    """Tell the access log whose token this request carries (the endpoint sees a copy of the
    request's state, so the name goes into the holder the middleware put there)."""
    holder = getattr(request.state, "audit_log", None)
    if isinstance(holder, dict):
        holder["auditor"] = name


def install(app: FastAPI) -> None:
    """Wrap every request of ``app`` in the refusal, the headers and the access log."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        began = time.perf_counter()
        known: tuple[auth.Auditor, ...] = request.app.state.auditors
        noted: dict[str, str] = {}
        request.state.audit_log = noted
        # The path only: a query string may hold what an auditor searched for.
        path = request.url.path
        if auth.credentials_in_url(path, request.query_params.multi_items(), known):
            path = "(a URL with credentials, not logged)"
            response: Response = JSONResponse({"error": "credentials_in_url", "message": URL_REFUSED}, 400)
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        if request.url.path.startswith(("/ui/", "/v1/")):
            response.headers["Cache-Control"] = "no-store"
        logger.info(
            "%s %s %d %.1f ms",
            request.method,
            path,
            response.status_code,
            (time.perf_counter() - began) * 1000,
            extra={"auditor": noted.get("auditor")},
        )
        return response
