"""Request counters: what reached the emulator, per reservation and overall.

Tests assert on them ("exactly one update reached TaskRouter", "two HTTP calls per action"), so
they count every Twilio API request, including refused and dropped ones, but never the admin
API. Recording is two dictionary increments on the hot path; shaping happens on read.
"""

from __future__ import annotations

import threading

OPERATIONS = ("fetch", "update", "list")
# The status recorded for a request whose connection was dropped without a response.
DROPPED = 0

CounterKey = tuple[str, int]


class Counters:
    """Counts by (operation, HTTP status), overall and per reservation SID from the request path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._overall: dict[CounterKey, int] = {}
        self._by_sid: dict[str, dict[CounterKey, int]] = {}

    def reset(self) -> None:
        with self._lock:
            self._overall = {}
            self._by_sid = {}

    def record(self, operation: str, sid: str | None, status: int) -> None:
        """Count one request; ``status`` is the HTTP status sent, or ``DROPPED``."""
        key = (operation, status)
        overall = self._overall
        overall[key] = overall.get(key, 0) + 1
        if sid is not None:
            per_sid = self._by_sid.get(sid)
            if per_sid is None:
                per_sid = self._by_sid[sid] = {}
            per_sid[key] = per_sid.get(key, 0) + 1

    def snapshot(self) -> dict[str, object]:
        """Everything: overall totals, by operation and status, and each reservation's counts."""
        with self._lock:
            overall = dict(self._overall)
            by_sid = {sid: dict(counts) for sid, counts in self._by_sid.items()}
        by_status: dict[str, int] = {}
        for (_, status), count in overall.items():
            label = _label(status)
            by_status[label] = by_status.get(label, 0) + count
        return {
            "requests": sum(overall.values()),
            "by_status": by_status,
            "operations": _by_operation(overall),
            "reservations": {sid: _by_operation(counts) for sid, counts in by_sid.items()},
        }

    def for_reservation(self, sid: str) -> dict[str, dict[str, int]]:
        """One reservation's counts: ``{"fetch": {"total": 2, "200": 2}, "update": {...}, "list": ...}``."""
        with self._lock:
            counts = dict(self._by_sid.get(sid, {}))
        return _by_operation(counts)


def _label(status: int) -> str:
    return "dropped" if status == DROPPED else str(status)


def _by_operation(counts: dict[CounterKey, int]) -> dict[str, dict[str, int]]:
    shaped: dict[str, dict[str, int]] = {operation: {"total": 0} for operation in OPERATIONS}
    for (operation, status), count in counts.items():
        bucket = shaped.setdefault(operation, {"total": 0})
        bucket["total"] += count
        label = _label(status)
        bucket[label] = bucket.get(label, 0) + count
    return shaped
