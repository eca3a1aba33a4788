"""The composition root: one store, counters and fault injector, wired into one aiohttp app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from workers.testing.emulator.admin_api import AdminApi
from workers.testing.emulator.api import TwilioApi
from workers.testing.emulator.counters import Counters
from workers.testing.emulator.faults import FaultInjector
from workers.testing.emulator.settings import EmulatorSettings
from workers.testing.emulator.store import Store


@dataclass(frozen=True, slots=True)
class EmulatorState:
    """Everything one emulator holds; in-process users (tests) may inspect it directly."""

    settings: EmulatorSettings
    store: Store
    counters: Counters
    faults: FaultInjector


STATE_KEY = web.AppKey("emulator_state", EmulatorState)


def build_app(settings: EmulatorSettings | None = None) -> web.Application:
    """The emulator's aiohttp application; its state is at ``app[STATE_KEY]``."""
    settings = settings or EmulatorSettings()
    state = EmulatorState(settings, Store(settings.log_size), Counters(), FaultInjector())
    twilio = TwilioApi(state.store, state.counters, state.faults, settings)
    admin = AdminApi(state.store, state.counters, state.faults, settings)
    app = web.Application()
    app[STATE_KEY] = state
    # Twilio's routes first: they are the hot path. The catch-all answers everything else.
    app.router.add_routes(twilio.routes())
    app.router.add_routes(admin.routes())
    app.router.add_route("*", "/{tail:.*}", twilio.fallback)
    return app
