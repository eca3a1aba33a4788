"""The ledger's tables use the vocabulary's words for every column the outside world sees."""

from __future__ import annotations

import psycopg

from workers.core.vocabulary import LEDGER_COLUMNS, OUTCOMES

# Columns that only the ledger itself reads (hash-chain bookkeeping, registry links).
INTERNAL = frozenset({"redrive_of", "last_chain_seq", "last_hash"})


def test_every_visible_column_is_a_word_of_the_vocabulary(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'ledger' AND table_name IN ('events', 'actions', 'reservations')"
        ).fetchall()
    columns = {column for _, column in rows}
    assert columns - INTERNAL <= LEDGER_COLUMNS, columns - INTERNAL - LEDGER_COLUMNS
    assert columns >= LEDGER_COLUMNS, LEDGER_COLUMNS - columns


def test_the_outcomes_the_ledger_accepts_are_the_vocabularys(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        checks = " ".join(
            row[0]
            for row in conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'ledger.actions'::regclass AND contype = 'c'"
            )
        )
    for outcome in OUTCOMES:
        assert f"'{outcome}'" in checks, outcome
