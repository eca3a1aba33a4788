"""Helpers for the events API's tests: the API served over real HTTP on a thread, and signed
deliveries built as Twilio builds them (the emulator's own signing helpers)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from workers.testing.emulator.process import free_port


class ServedApp:
    """An ASGI app served by uvicorn on a thread of its own: ``with ServedApp(app) as served: served.url``."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="served-app", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServedApp:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
