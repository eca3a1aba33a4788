"""TaskRouter SID patterns (seeds 000 and 001): two letters and 32 hexadecimal digits."""

from __future__ import annotations

import re
import secrets

SID_PATTERNS: dict[str, re.Pattern[str]] = {
    prefix: re.compile(rf"^{prefix}[0-9a-fA-F]{{32}}$")
    for prefix in ("AC", "WS", "WT", "WK", "WR", "WA", "CA")
}


def is_sid(value: str, prefix: str) -> bool:
    return bool(SID_PATTERNS[prefix].fullmatch(value))


def new_sid(prefix: str) -> str:
    """A fresh random SID, as TaskRouter would mint it (lower-case hex)."""
    if prefix not in SID_PATTERNS:
        raise ValueError(f"unknown SID prefix {prefix!r}")
    return prefix + secrets.token_hex(16)
