"""Parsing what people type as filters: times. Shared by the CLI and the API. Pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")
_LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$")


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 time with its offset, e.g. ``2026-01-31T12:00:00Z``; ValueError otherwise."""
    found = _RFC3339.match(value)
    if found is None:
        raise ValueError("must be an RFC 3339 time with an offset, e.g. 2026-01-31T12:00:00Z")
    fraction, offset = found.group(1), found.group(2)
    head = value[:19]
    text = head + ("." + fraction[:6].ljust(6, "0") if fraction else "")
    text += "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"is not a valid time: {exc}") from None


def parse_time(value: str) -> datetime:
    """RFC 3339, or a plain ``YYYY-MM-DD[ HH:MM[:SS]]`` taken as UTC (for people at a terminal)."""
    if _LOCAL.match(value):
        try:
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        except ValueError as exc:
            raise ValueError(f"is not a valid time: {exc}") from None
    return parse_rfc3339(value)
