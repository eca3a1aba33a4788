"""The emulator's records: immutable, so a reader never sees half an update.

The store replaces a record whenever it changes; HTTP handlers and admin code on other threads
can hold and render one without taking the store's lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from workers.core.state_machine import Status

# Twilio's date format in resource representations (seed 001): 2014-05-14T10:50:02Z.
TWILIO_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def twilio_time(epoch: float | None = None) -> str:
    """A time in Twilio's resource date format, in UTC."""
    return time.strftime(TWILIO_DATE_FORMAT, time.gmtime(epoch))


@dataclass(frozen=True, slots=True)
class Workspace:
    """A workspace; ``event_callback_url`` and ``events_filter`` say where its Event Callbacks go
    and which event types are sent (None: all), as on Twilio's Workspace resource."""

    sid: str
    friendly_name: str
    event_callback_url: str | None = None
    events_filter: tuple[str, ...] | None = None
    date_created: str = ""
    date_updated: str = ""


@dataclass(frozen=True, slots=True)
class Task:
    sid: str
    workspace_sid: str
    rejections: int = 0
    canceled: bool = False


@dataclass(frozen=True, slots=True)
class Worker:
    sid: str
    workspace_sid: str
    friendly_name: str
    activity_sid: str | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation; ``version`` changes on every modification and is the ETag."""

    sid: str
    workspace_sid: str
    task_sid: str
    worker_sid: str
    worker_name: str
    status: Status
    version: int
    date_created: str
    date_updated: str
    worker_activity_sid: str | None = None

    @property
    def etag(self) -> str:
        return str(self.version)


@dataclass(frozen=True, slots=True)
class Transition:
    """One applied modification, as the transition log keeps it.

    ``source`` is ``api`` (a Twilio API update, or its consequences such as the task's other
    reservations being canceled), ``admin`` (a change made through ``/_emulator/``), ``timeout``
    (TaskRouter timing a pending reservation out by itself: its reservation timeout, or
    ``/_emulator/reservations/{sid}/timeout``) or ``fault`` (a concurrent change injected by a
    ``conflict_storm`` or ``status_race`` fault). ``requested`` says what was
    asked for: ``ReservationStatus=accepted`` or ``Instruction=call`` for the API, the admin
    verb (``timeout``, ``touch``, ...) otherwise.
    """

    sequence: int
    reservation_sid: str
    task_sid: str
    worker_sid: str
    workspace_sid: str
    from_status: Status
    to_status: Status
    version_before: int
    version_after: int
    source: str
    request_id: str | None
    requested: str
    at: float
    note: str | None = None


class _Logged(Protocol):
    @property
    def sequence(self) -> int: ...

    @property
    def reservation_sid(self) -> str: ...


L = TypeVar("L", bound=_Logged)


def logged_after(entries: Iterable[L], reservation_sid: str | None, since: int) -> list[L]:
    """A log's entries after sequence number ``since``, optionally of one reservation only."""
    return [
        entry
        for entry in entries
        if entry.sequence > since and (reservation_sid is None or entry.reservation_sid == reservation_sid)
    ]


class StoreListener(Protocol):
    """Told of every reservation created and every transition, under the store's lock and in
    commit order; it must not block (the event log and the callback sender queue and return)."""

    def created(self, reservation: Reservation) -> None: ...

    def transitioned(self, transition: Transition, reservation: Reservation) -> None: ...
