"""The PostgreSQL ledger: append-only, tamper-evident, replayable (design doc, "The ledger").

``events`` are what a writer appends; ``ports.LedgerWriter`` is the writer the applier uses
(``lock``, ``receive``, ``append``), ``writer.PostgresLedgerWriter`` implements it under the
writer role and ``reader.LedgerReader`` reads under the reader role. ``migrations``, ``verify``
and ``projection`` serve the operator commands; ``connector`` is the only module that talks to
psycopg's errors. See ops/LEDGER.md for what it guarantees.

This package module imports nothing itself, so that importing the events or the port (the
applier does) does not import psycopg.
"""
