"""What a ledger client over one connection pool shares: its role, its construction from the
settings and its closing (the reader here; the writer is meant to share it too)."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from workers.config import Settings
from workers.core.closing import Closing
from workers.ledger.connector import BoundConnection, Connector
from workers.ledger.models import Role
from workers.ledger.pii import resolve_pii_key


class Pooled(Closing):
    """A ledger client that runs as :attr:`ROLE` over ``self._connector``, which it closes."""

    ROLE: ClassVar[Role]
    _connector: Connector | BoundConnection

    def __init__(self, connector: Connector | BoundConnection, pii_key: str | bytes) -> None:
        self._connector = connector
        self._pii_key = pii_key

    @classmethod
    def from_settings(cls, settings: Settings, **pool: Any) -> Self:
        connector = Connector(settings.database_url, cls.ROLE, **pool)
        connector.open()
        return cls(connector, resolve_pii_key(settings.ledger_pii_key))

    def close(self) -> None:
        self._connector.close()
