"""The account's concurrency limit, as Twilio enforces it: beyond ``limit`` requests in flight,
a request is refused at once with HTTP 429 and error 20429, with or without ``Retry-After``.

Every answer of a limited emulator carries ``Twilio-Concurrent-Requests`` (the requests in flight,
this one included, as Twilio sends it) and ``X-Rate-Limit-Limit``/``X-Rate-Limit-Remaining``, so
clients can watch the limit approach. Counted on the event loop's thread only: no lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workers.errors import InvalidParameter


@dataclass(slots=True)
class ConcurrencyLimit:
    """``limit`` None: unlimited (the default, and the fast path)."""

    limit: int | None = None
    retry_after: int | None = None
    in_flight: int = 0
    peak: int = 0
    refused: int = 0
    admitted: int = 0

    def configure(self, spec: Mapping[str, object]) -> None:
        """Set ``limit`` and ``retry_after`` from JSON (null: none); counts start again."""
        unknown = sorted(set(spec) - {"limit", "retry_after"})
        if unknown:
            raise InvalidParameter(unknown[0], f"Unknown concurrency field {unknown[0]!r}")
        limit, retry_after = spec.get("limit"), spec.get("retry_after")
        for name, value, least in (("limit", limit, 1), ("retry_after", retry_after, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise InvalidParameter(name, f"{name!r} must be null or a whole number of at least {least}")
        self.set(
            limit if isinstance(limit, int) else None, retry_after if isinstance(retry_after, int) else None
        )

    def set(self, limit: int | None, retry_after: int | None) -> None:
        self.limit, self.retry_after = limit, retry_after
        self.peak = self.refused = self.admitted = 0

    def describe(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "retry_after": self.retry_after,
            "in_flight": self.in_flight,
            "peak": self.peak,
            "admitted": self.admitted,
            "refused": self.refused,
        }

    def admit(self) -> bool:
        """Count one more request in flight, or refuse it (False) when the account is at its limit."""
        if self.limit is not None and self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        self.admitted += 1
        self.peak = max(self.peak, self.in_flight)
        return True

    def done(self) -> None:
        self.in_flight -= 1

    def headers(self) -> dict[str, str]:
        """What a limited emulator says of the account's concurrency on every answer."""
        if self.limit is None:
            return {}
        return {
            "Twilio-Concurrent-Requests": str(self.in_flight),
            "X-Rate-Limit-Limit": str(self.limit),
            "X-Rate-Limit-Remaining": str(max(0, self.limit - self.in_flight)),
        }
