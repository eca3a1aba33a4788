"""Where the emulator's events come from and go: the store's listener, the reservation timers,
the Event Streams sink.

Every reservation created and every status change (through the API, through ``/_emulator/``,
by a timeout, by an injected race) becomes one :class:`~events.Event` in the log the Events
resource serves, and one delivery to the workspace's ``EventCallbackUrl`` (when its
``EventsFilter`` lets the type through) and to the Event Streams sink (when one is set).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from workers.core.state_machine import Status
from workers.errors import TransitionRefused, UnknownResource
from workers.testing.emulator.events import CREATED, Event, EventLog, event_type_of
from workers.testing.emulator.model import Reservation, Transition, Workspace
from workers.testing.emulator.sender import CALLBACK, STREAM, Sender
from workers.testing.emulator.store import Store

TIMEOUT_SOURCE = "timeout"


@dataclass(frozen=True, slots=True)
class StreamSink:
    """An Event Streams webhook sink: where CloudEvents go, and which types (None: all)."""

    url: str
    event_types: tuple[str, ...] | None = None


class EventHub:
    """The store's listener: records each event, hands its deliveries to the sender, runs timers."""

    def __init__(
        self,
        log: EventLog,
        sender: Sender,
        *,
        reservation_timeout: float | None = None,
        sink: StreamSink | None = None,
    ) -> None:
        self.log = log
        self.sender = sender
        self.reservation_timeout = reservation_timeout
        self._default_sink = sink
        self.sink = sink
        self._store: Store | None = None
        self._timers: dict[str, asyncio.TimerHandle] = {}  # touched on the sender's thread only

    def attach(self, store: Store) -> None:
        self._store = store

    def reset(self) -> None:
        """Forget the events, pending deliveries and timers; the sink goes back to its default."""
        self.sender.run_soon(self._disarm_all)
        self.sender.clear()
        self.log.reset()
        self.sender.log.reset()
        self.sink = self._default_sink

    # -- StoreListener (called under the store's lock: queue and return) ----------------------------

    def created(self, reservation: Reservation) -> None:
        self.emit(CREATED, reservation, "admin")
        if reservation.status is Status.PENDING and self.reservation_timeout is not None:
            self.schedule_timeout(reservation.sid, self.reservation_timeout)

    def transitioned(self, transition: Transition, reservation: Reservation) -> None:
        event_type = event_type_of(transition)
        if event_type is None:
            return
        self.emit(event_type, reservation, transition.source, transition.at)
        if reservation.status is not Status.PENDING:
            self.sender.run_soon(lambda: self._disarm(reservation.sid))

    # -- events ---------------------------------------------------------------------------------------

    def emit(self, event_type: str, reservation: Reservation, source: str, at: float | None = None) -> Event:
        """Record one event of ``reservation`` and queue its deliveries."""
        workspace = self._workspace(reservation.workspace_sid)
        event = self.log.record(event_type, workspace, reservation, source, at)
        if workspace is not None and workspace.event_callback_url:
            wanted = workspace.events_filter
            if wanted is None or event_type in wanted:
                self.sender.submit(event, CALLBACK, workspace.event_callback_url)
        sink = self.sink
        if sink is not None and (sink.event_types is None or event_type in sink.event_types):
            self.sender.submit(event, STREAM, sink.url)
        return event

    def _workspace(self, sid: str) -> Workspace | None:
        if self._store is None:
            return None
        try:
            return self._store.workspace(sid)
        except UnknownResource:
            return None

    # -- reservation timeouts (the timers live on the sender's thread) ---------------------------------

    def schedule_timeout(self, reservation_sid: str, seconds: float) -> None:
        """Time the reservation out after ``seconds`` unless it has left ``pending`` by then."""
        self.sender.run_soon(lambda: self._arm(reservation_sid, seconds))

    def time_out(self, reservation_sid: str) -> Reservation | None:
        """TaskRouter times a pending reservation out; None when it is no longer pending."""
        if self._store is None:
            return None
        try:
            return self._store.change(reservation_sid, "timeout", source=TIMEOUT_SOURCE)
        except (TransitionRefused, UnknownResource):
            return None

    def _arm(self, reservation_sid: str, seconds: float) -> None:
        previous = self._timers.pop(reservation_sid, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._timers[reservation_sid] = loop.call_later(seconds, self._fire, reservation_sid)

    def _fire(self, reservation_sid: str) -> None:
        self._timers.pop(reservation_sid, None)
        self.time_out(reservation_sid)

    def _disarm(self, reservation_sid: str) -> None:
        handle = self._timers.pop(reservation_sid, None)
        if handle is not None:
            handle.cancel()

    def _disarm_all(self) -> None:
        timers, self._timers = self._timers, {}
        for handle in timers.values():
            handle.cancel()

    def pending_timeouts(self) -> int:
        return len(self._timers)
