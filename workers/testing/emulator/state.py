"""Everything one emulator holds, handed as one to the route sets that serve it."""

from __future__ import annotations

from dataclasses import dataclass

from workers.testing.emulator.counters import Counters
from workers.testing.emulator.faults import FaultInjector
from workers.testing.emulator.limits import ConcurrencyLimit
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
    concurrency: ConcurrencyLimit

    @classmethod
    def new(cls, settings: EmulatorSettings) -> EmulatorState:
        concurrency = ConcurrencyLimit(settings.concurrency_limit, settings.concurrency_retry_after)
        return cls(
            settings,
            Store(settings.log_size),
            Counters(),
            FaultInjector(),
            UpdateLog(settings.log_size),
            concurrency,
        )
