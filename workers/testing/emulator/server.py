"""Running the emulator: on a background thread (tests) or in the foreground (the CLI).

``EmulatorServer`` gives a test a real HTTP server on a free loopback port with its own event
loop, so the synchronous twilio SDK can talk to it over real sockets from the test's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable

from aiohttp import web

from workers.errors import ConfigurationError
from workers.testing.emulator.app import STATE_KEY, EmulatorState, build_app
from workers.testing.emulator.settings import EmulatorSettings
from workers.testing.processes import Background

# How long a stopping server waits for requests in flight.
SHUTDOWN_TIMEOUT = 2.0
STARTUP_TIMEOUT = 10.0


def _runner(app: web.Application, access_log: bool) -> web.AppRunner:
    return web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )


class AppServer(Background):
    """An aiohttp application served on a thread of its own, on a free loopback port by default."""

    def __init__(
        self, app: web.Application, host: str = "127.0.0.1", port: int = 0, access_log: bool = False
    ) -> None:
        self._host = host
        self._port = port
        self._app = app
        self._access_log = access_log
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._bound_port: int | None = None

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self._host}:{self._bound_port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT):
            raise ConfigurationError(f"{type(self).__name__} did not start in time")
        if self._error is not None:
            raise ConfigurationError(f"{type(self).__name__} could not start: {self._error}") from self._error

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(SHUTDOWN_TIMEOUT + 5)
        self._thread = None
        self._bound_port = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = _runner(self._app, self._access_log)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self._host, self._port)
            loop.run_until_complete(site.start())
            self._bound_port = int(runner.addresses[0][1])
        except BaseException as error:  # reported to the starting thread
            self._error = error
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class EmulatorServer(AppServer):
    """An emulator on a thread of its own: ``with EmulatorServer() as emulator: emulator.base_url``."""

    def __init__(
        self, settings: EmulatorSettings | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.settings = settings or EmulatorSettings()
        super().__init__(build_app(self.settings), host, port, self.settings.access_log)

    @property
    def state(self) -> EmulatorState:
        return self._app[STATE_KEY]


def serve(
    settings: EmulatorSettings, host: str, port: int, announce: Callable[[str], None] | None = None
) -> None:
    """Run the emulator in the foreground until SIGINT or SIGTERM."""
    asyncio.run(_serve(settings, host, port, announce))


async def _serve(
    settings: EmulatorSettings, host: str, port: int, announce: Callable[[str], None] | None
) -> None:
    runner = _runner(build_app(settings), settings.access_log)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        if announce is not None:
            announce(f"http://{bound_host}:{bound_port}")
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stopping.set)
        await stopping.wait()
    finally:
        await runner.cleanup()
