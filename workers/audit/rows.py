"""One mapping from ledger rows and registry entries to what the CLI and the API show.

Audit output uses the ledger's own words (``workers.core.vocabulary``): a field is named as its
column is. ``cursor`` is the opaque place to resume after (``<tx_id>:<position>``): ledger order is
``(tx_id, position)``, not ``position`` alone.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from workers.core.vocabulary import EVENT_COLUMNS
from workers.ledger.models import ActionRecord, LedgerRow, ReservationState

# Ledger columns the audit output does not show: the transaction id is inside ``cursor``.
_HIDDEN = frozenset({"tx_id", "prev_hash"})

# The order of the fields in JSON lines, CSV columns and API objects: the ledger's column order,
# with ``cursor`` after ``position``.
EVENT_FIELDS: tuple[str, ...] = (
    "position",
    "cursor",
    *(name for name in EVENT_COLUMNS[1:] if name not in _HIDDEN),
)


def plain(value: object) -> Any:
    """A JSON-ready form of one value: ISO 8601 times, UUIDs and hashes as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def event_row(event: LedgerRow) -> dict[str, Any]:
    """A ledger row under the audit names, in :data:`EVENT_FIELDS` order, JSON-ready."""
    values: dict[str, Any] = {"cursor": str(event.cursor)}
    for field in dataclasses.fields(event):
        if field.name not in _HIDDEN:
            values[field.name] = plain(getattr(event, field.name))
    return {name: values.get(name) for name in EVENT_FIELDS}


def action_row(record: ActionRecord) -> dict[str, Any]:
    """A registry entry, JSON-ready (PII parameters are keyed hashes already)."""
    return _fields_row(record)


def reservation_row(state: ReservationState) -> dict[str, Any]:
    """A projection row, JSON-ready; ``last_position`` is the position of its last transition."""
    return _fields_row(state)


def _fields_row(record: ActionRecord | ReservationState) -> dict[str, Any]:
    return {field.name: plain(getattr(record, field.name)) for field in dataclasses.fields(record)}
