"""A recording HTTP receiver for the emulator's Event Callbacks and Event Streams deliveries.

For tests (ours and our users'): ``with CallbackReceiver() as receiver:`` serves on a free
loopback port, records every request it gets (path, headers, raw body) and answers 204 with
``Content-Type: application/json`` as Twilio asks of an Event Callback receiver, or whatever
``answer(status, delay)`` tells it to, so that a test can make a receiver fail or be slow.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from workers.testing.emulator.server import AppServer


@dataclass(frozen=True, slots=True)
class Received:
    """One request the receiver got."""

    at: float
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == wanted), None)

    @property
    def form(self) -> dict[str, str]:
        """The form-encoded body as a dict (an Event Callback's parameters)."""
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class CallbackReceiver(AppServer):
    """Records what it receives; ``url(path)`` is where to point a callback."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._status = 204
        self._delay = 0.0
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        super().__init__(app, host, port)

    def url(self, path: str = "/taskrouter/events") -> str:
        return self.base_url + path

    def answer(self, status: int = 204, delay: float = 0.0) -> None:
        """How to answer from now on: this status, after this many seconds."""
        self._status, self._delay = status, delay

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [item for item in self._received if path is None or item.path_qs.split("?")[0] == path]

    def clear(self) -> None:
        with self._lock:
            self._received.clear()

    def wait_for(self, count: int, timeout: float = 10.0, path: str | None = None) -> list[Received]:
        """At least ``count`` requests (to ``path``), waiting up to ``timeout`` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(found := self.received(path)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self._received.append(
                Received(time.time(), request.method, request.path_qs, dict(request.headers), body)
            )
        if self._delay:
            await asyncio.sleep(self._delay)
        return web.Response(status=self._status, headers={"Content-Type": "application/json"})
