"""The composition root: one store, counters and fault injector, wired into one aiohttp app."""

from __future__ import annotations

import asyncio

from aiohttp import web

from workers.testing.emulator.admin_api import AdminApi
from workers.testing.emulator.api import TwilioApi
from workers.testing.emulator.events_api import EventsApi
from workers.testing.emulator.settings import EmulatorSettings
from workers.testing.emulator.state import EmulatorState

__all__ = ["STATE_KEY", "EmulatorState", "build_app"]

STATE_KEY = web.AppKey("emulator_state", EmulatorState)


def build_app(settings: EmulatorSettings | None = None) -> web.Application:
    """The emulator's aiohttp application; its state is at ``app[STATE_KEY]``."""
    settings = settings or EmulatorSettings()
    state = EmulatorState.new(settings)
    twilio, admin = TwilioApi(state), AdminApi(state)
    app = web.Application()
    app[STATE_KEY] = state
    # Twilio's routes first: they are the hot path. The catch-all answers everything else.
    app.router.add_routes(twilio.routes())
    app.router.add_routes(EventsApi(state).routes())
    app.router.add_routes(admin.routes())
    app.router.add_route("*", "/{tail:.*}", twilio.fallback)
    app.on_startup.append(_start_sender)
    app.on_cleanup.append(_stop_sender)
    return app


async def _start_sender(app: web.Application) -> None:
    """The event sender runs on a thread of its own, for as long as the app serves."""
    app[STATE_KEY].events.sender.start()


async def _stop_sender(app: web.Application) -> None:
    await asyncio.to_thread(app[STATE_KEY].events.sender.stop)
