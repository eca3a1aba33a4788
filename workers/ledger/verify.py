"""``reservations ledger verify``: walk the hash chains and the checkpoints, report each break;
seal a checkpoint.

Every row's hash is recomputed with the same SQL function that the append trigger used
(``ledger.event_hash``, over ``ledger.event_canonical``), so the canonical serialisation is
defined once. Each problem names the ledger position it concerns (for a removed row: the
position of the row that follows the gap, or the head's position when a chain's tail is gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.rows import class_row, dict_row

from workers.ledger.connector import Connection, translated
from workers.ledger.models import Checkpoint, Problem
from workers.ledger.queries import QUERIES


def _rows(conn: Connection, query: str) -> list[dict[str, Any]]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[query])
        return cur.fetchall()


def verify(conn: Connection, expected: Sequence[tuple[int, bytes]] = ()) -> list[Problem]:
    """Everything wrong with the ledger's chains and checkpoints, in position order per check.

    ``expected`` are ``(checkpoint_id, digest)`` pairs kept outside the database: each must
    still be there, unchanged. Runs in one REPEATABLE READ READ ONLY transaction, so
    concurrent appends cannot make a sound ledger look broken.
    """
    problems: list[Problem] = []
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for checkpoint_id, digest in expected:
            with conn.cursor(row_factory=class_row(Checkpoint)) as cur:
                found = cur.execute(QUERIES["get_checkpoint"], {"checkpoint_id": checkpoint_id}).fetchone()
            if found is None or found.digest != digest:
                what = "is missing" if found is None else f"has digest {found.digest.hex()}"
                problems.append(
                    Problem(
                        "checkpoint",
                        None,
                        found.max_position if found else None,
                        f"checkpoint {checkpoint_id} {what}, expected {digest.hex()}",
                    )
                )
        for row in _rows(conn, "verify_rows"):
            problems.extend(_row_problems(row))
        for row in _rows(conn, "verify_unheaded_rows"):
            if row["head_seq"] is None:
                message = "row in a chain that has no head: it was not appended by the ledger"
            else:
                message = (
                    f"row at chain seq {row['chain_seq']} lies past its chain's head (seq {row['head_seq']})"
                )
            problems.append(Problem("inserted", row["chain_key"], row["position"], message))
        for row in _rows(conn, "verify_heads"):
            problems.append(_head_problem(row))
        for row in _rows(conn, "verify_sealed_heads"):
            kind = "removed" if row["missing"] else "altered"
            what = "is missing" if row["missing"] else "differs from the sealed head"
            problems.append(
                Problem(
                    kind,
                    row["chain_key"],
                    row["head_position"],
                    f"row at chain seq {row['chain_seq']}, sealed by checkpoint {row['checkpoint_id']},"
                    f" {what}",
                )
            )
        for row in _rows(conn, "verify_checkpoints"):
            problems.append(
                Problem(
                    "checkpoint",
                    None,
                    row["max_position"],
                    f"checkpoint {row['checkpoint_id']} does not match its sealed heads or its predecessor",
                )
            )
    return problems


def _row_problems(row: dict[str, Any]) -> list[Problem]:
    chain, position, seq = row["chain_key"], row["position"], row["chain_seq"]
    found = []
    if row["missing_before"] > 0:
        found.append(
            Problem(
                "removed",
                chain,
                position,
                f"{row['missing_before']} row(s) missing before this one (chain seq {seq})",
            )
        )
    if row["altered"]:
        found.append(
            Problem("altered", chain, position, f"content does not match its hash (chain seq {seq})")
        )
    if row["broken_link"] and row["missing_before"] == 0:
        found.append(
            Problem(
                "broken_link",
                chain,
                position,
                f"does not follow the previous row of its chain (chain seq {seq}):"
                " that row was altered or replaced",
            )
        )
    return found


def _head_problem(row: dict[str, Any]) -> Problem:
    chain, head_seq, head_position = row["chain_key"], row["head_seq"], row["head_position"]
    if row["tail_seq"] is None:
        return Problem(
            "removed", chain, head_position, f"the whole chain is missing (head at seq {head_seq})"
        )
    if row["tail_seq"] < head_seq:
        return Problem(
            "removed",
            chain,
            head_position,
            f"the chain ends at seq {row['tail_seq']} (position {row['tail_position']})"
            f" but its head is seq {head_seq}",
        )
    return Problem(
        "altered", chain, row["tail_position"], f"the chain's last row (seq {head_seq}) is not its head"
    )


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    rows = _rows(conn, "latest_checkpoint")
    return Checkpoint(**rows[0]) if rows else None


def seal_checkpoint(conn: Connection) -> Checkpoint:
    """Seal the chain heads that moved since the last checkpoint (needs the writer role)."""
    return Checkpoint(**_rows(conn, "seal_checkpoint")[0])
