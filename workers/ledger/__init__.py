"""The PostgreSQL ledger: append-only, tamper-evident, replayable (design doc, "The ledger").

``Ledger`` is the repository the workers use; ``migrations``, ``verify`` and ``projection``
serve the operator commands; ``connector`` is the only module that talks to psycopg's errors.
See ops/LEDGER.md for what it guarantees.
"""

from workers.ledger.connector import Connector
from workers.ledger.models import Cursor, EventKind, Outcome, Role
from workers.ledger.store import Ledger

__all__ = ["Connector", "Cursor", "EventKind", "Ledger", "Outcome", "Role"]
