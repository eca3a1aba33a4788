"""The update log: every update request the Twilio API received, with its fate.

The transition log says what changed; this log says what each update request asked for (its
parameters, by wire name, and its If-Match), which faults struck it, what it was answered
(``200``, ``412``, ``429``, ... or ``"dropped"``) and whether it *landed* (changed the
reservation: ``landed_version`` is the version it produced). A checker finds there, per
reservation, every update that landed and whether its answer was lost on the way (a drop after
apply), which the counters alone cannot tell. Bounded like the transition log.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass

from workers.testing.emulator.model import logged_after

DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class UpdateEntry:
    sequence: int
    at: float
    reservation_sid: str
    request_id: str
    scope: str
    params: dict[str, object] | None  # None when the body could not be parsed
    if_match: str | None
    faults: tuple[str, ...]
    answer: int | str  # the HTTP status sent, or "dropped"
    landed_version: int | None  # the version the update produced, when it landed
    from_status: str | None
    to_status: str | None
    # The W3C trace context the request carried (its ``traceparent`` header), if any.
    traceparent: str | None = None

    @property
    def landed(self) -> bool:
        return self.landed_version is not None


class UpdateLog:
    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._sequence = itertools.count(1)
        self._entries: deque[UpdateEntry] = deque(maxlen=size)

    def reset(self) -> None:
        with self._lock:
            self._sequence = itertools.count(1)
            self._entries = deque(maxlen=self._size)

    def record(
        self,
        *,
        reservation_sid: str,
        request_id: str,
        scope: str,
        params: dict[str, object] | None,
        if_match: str | None,
        faults: tuple[str, ...],
        answer: int | str,
        landed_version: int | None = None,
        from_status: str | None = None,
        to_status: str | None = None,
        traceparent: str | None = None,
    ) -> None:
        with self._lock:
            self._entries.append(
                UpdateEntry(
                    next(self._sequence),
                    time.time(),
                    reservation_sid,
                    request_id,
                    scope,
                    params,
                    if_match,
                    faults,
                    answer,
                    landed_version,
                    from_status,
                    to_status,
                    traceparent,
                )
            )

    def entries(self, reservation_sid: str | None = None, since: int = 0) -> list[UpdateEntry]:
        with self._lock:
            entries = list(self._entries)
        return logged_after(entries, reservation_sid, since)
