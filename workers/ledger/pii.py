"""The ledger's key for PII: what both the writer (to redact) and the reader (to search) need."""

from __future__ import annotations

import logging

from workers.core.redaction import DEVELOPMENT_PII_KEY

logger = logging.getLogger(__name__)


def resolve_pii_key(configured: str | None) -> str:
    """LEDGER_PII_KEY, or the development key with a warning (the key itself is never logged)."""
    if configured:
        return configured
    logger.warning(
        "LEDGER_PII_KEY is unset: PII is hashed with the public development key;"
        " set LEDGER_PII_KEY in production"
    )
    return DEVELOPMENT_PII_KEY
