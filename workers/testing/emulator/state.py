"""Everything one emulator holds, handed as one to the route sets that serve it."""

from __future__ import annotations

from dataclasses import dataclass

from workers.testing.emulator.callback_faults import CallbackFaults
from workers.testing.emulator.counters import Counters
from workers.testing.emulator.events import EventLog
from workers.testing.emulator.faults import FaultInjector
from workers.testing.emulator.hub import EventHub, StreamSink
from workers.testing.emulator.limits import ConcurrencyLimit
from workers.testing.emulator.sender import DeliveryLog, Sender
from workers.testing.emulator.settings import EmulatorSettings
from workers.testing.emulator.store import Store
from workers.testing.emulator.updates import UpdateLog


@dataclass(frozen=True, slots=True)
class EmulatorState:
    """Everything one emulator holds; in-process users (tests) may inspect it directly."""

    settings: EmulatorSettings
    store: Store
    counters: Counters
    faults: FaultInjector
    updates: UpdateLog
    events: EventHub
    callback_faults: CallbackFaults
    concurrency: ConcurrencyLimit

    @classmethod
    def new(cls, settings: EmulatorSettings) -> EmulatorState:
        callback_faults = CallbackFaults()
        sender = Sender(
            settings.auth_token,
            callback_faults,
            DeliveryLog(settings.log_size),
            queue_size=settings.callback_queue_size,
            concurrency=settings.callback_concurrency,
        )
        sink = None if settings.event_streams_url is None else StreamSink(settings.event_streams_url)
        hub = EventHub(
            EventLog(settings.log_size, settings.account_sid),
            sender,
            reservation_timeout=settings.reservation_timeout,
            sink=sink,
        )
        store = Store(settings.log_size, hub, (settings.event_callback_url, settings.events_filter))
        hub.attach(store)
        concurrency = ConcurrencyLimit(settings.concurrency_limit, settings.concurrency_retry_after)
        return cls(
            settings,
            store,
            Counters(),
            FaultInjector(),
            UpdateLog(settings.log_size),
            hub,
            callback_faults,
            concurrency,
        )
