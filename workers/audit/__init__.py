"""Audit: the ledger's rows as auditors see them (``rows``), and the read-only HTTP API (``api``).

The CLI (``reservations history``/``show``) and the API present rows through the same mapping,
so a field has one name everywhere: the ledger's column name (``workers.core.vocabulary``).
"""
