"""The PostgreSQL ledger: append-only, tamper-evident, replayable (design doc, "The ledger")."""
