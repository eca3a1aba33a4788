"""How far one reservation's hash chain is verified, for a person to read. Pure.

The rows are checked by the same SQL function the append trigger used (``ledger.event_hash``, in
the ``chain_rows`` query); here the checks become one verdict: "verified up to checkpoint N",
"intact, not yet sealed", or "altered at position P" (the first break, in chain order).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.ledger.models import ChainRow, ChainSeals

INTACT = "intact"
BROKEN = "broken"
EMPTY = "empty"


@dataclass(frozen=True, slots=True)
class ChainState:
    """``state`` is intact, broken or empty; ``summary`` says it in a sentence; ``position`` is
    the first broken row's (None when intact); ``checkpoint_id`` the latest checkpoint that sealed
    a head this chain still holds."""

    state: str
    summary: str
    rows: int
    position: int | None = None
    checkpoint_id: int | None = None
    unsealed: int = 0


def chain_state(rows: list[ChainRow], seals: ChainSeals) -> ChainState:
    """The verdict on one chain, from its checked rows (in chain order) and its head and seal."""
    if not rows:
        if seals.head_seq is not None:
            return ChainState(BROKEN, f"removed: the head says {seals.head_seq} rows, none is left", 0)
        return ChainState(EMPTY, "no rows in this chain", 0)
    for row in rows:
        if not row.seq_ok:
            return ChainState(BROKEN, f"removed before position {row.position}", len(rows), row.position)
        if not row.hash_ok:
            return ChainState(BROKEN, f"altered at position {row.position}", len(rows), row.position)
        if not row.link_ok:
            return ChainState(
                BROKEN,
                f"broken link at position {row.position}: the row before it was replaced",
                len(rows),
                row.position,
            )
    last = rows[-1]
    if seals.head_seq is None or seals.head_seq != last.chain_seq or seals.head_hash != last.row_hash:
        return ChainState(
            BROKEN,
            f"the chain does not end on its head (last row at position {last.position})",
            len(rows),
            last.position,
        )
    if seals.checkpoint_id is None or seals.sealed_seq is None:
        return ChainState(INTACT, "intact, not yet sealed by a checkpoint", len(rows), unsealed=len(rows))
    sealed = next((row for row in rows if row.chain_seq == seals.sealed_seq), None)
    if sealed is None or sealed.row_hash != seals.sealed_hash:
        where = seals.sealed_position
        return ChainState(
            BROKEN,
            f"altered at position {where}: it differs from what checkpoint {seals.checkpoint_id} sealed",
            len(rows),
            where,
            seals.checkpoint_id,
        )
    unsealed = last.chain_seq - seals.sealed_seq
    tail = f", {unsealed} row(s) since, linked but not yet sealed" if unsealed else ""
    return ChainState(
        INTACT,
        f"verified up to checkpoint {seals.checkpoint_id}{tail}",
        len(rows),
        checkpoint_id=seals.checkpoint_id,
        unsealed=unsealed,
    )
