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

from workers.errors import VerificationError
from workers.ledger.connector import Connection, translated
from workers.ledger.models import Checkpoint, Problem
from workers.ledger.queries import QUERIES


def _rows(conn: Connection, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(QUERIES[query], params)
        return cur.fetchall()


def verify(conn: Connection, expected: Sequence[tuple[int, bytes]] = ()) -> list[Problem]:
    """Everything wrong with the ledger's chains and checkpoints, in position order per check.

    ``expected`` are ``(checkpoint_id, digest)`` pairs kept outside the database: each must
    still be there, unchanged. Runs in one REPEATABLE READ READ ONLY transaction, so
    concurrent appends cannot make a sound ledger look broken.
    """
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        problems = _expected_problems(conn, expected)
        for row in _rows(conn, "verify_rows"):
            problems.extend(_row_problems(row))
        problems.extend(_unheaded_problems(_rows(conn, "verify_unheaded_rows")))
        problems.extend(_head_problem(row) for row in _rows(conn, "verify_heads"))
        problems.extend(_first_moment_problems(_rows(conn, "verify_first_moments")))
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
        problems.extend(_checkpoint_problems(_rows(conn, "verify_checkpoints", {"after": 0})))
    return problems


def verify_since(
    conn: Connection, checkpoint_id: int, expected: Sequence[tuple[int, bytes]] = ()
) -> tuple[list[Problem], int]:
    """What :func:`verify` finds among the rows written after checkpoint ``checkpoint_id``, and
    how many rows were checked: in time proportional to those rows.

    Each chain starts from its head sealed by that checkpoint or an earlier one (which a full
    verify, or an earlier incremental one, checked); the rows read are those at or above the
    checkpoint's horizon, which holds every row the seal did not see. The checkpoints after
    ``checkpoint_id`` must match their digests and follow it (that one was checked by the verify
    that ran before it was sealed).
    Raises :class:`VerificationError` when the checkpoint is missing or predates migration 0005.
    """
    with translated(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        # The new rows are sorted by chain, whole: in memory rather than in files on disk. JIT
        # compiling took 40 to 90 ms of it and saves nothing: the work is in ledger.event_hash.
        conn.execute("SET LOCAL work_mem = '128MB'")
        conn.execute("SET LOCAL jit = off")
        found = _rows(conn, "checkpoint_horizon", {"checkpoint_id": checkpoint_id})
        if not found:
            raise VerificationError(f"there is no checkpoint {checkpoint_id}")
        if found[0]["horizon"] is None:
            raise VerificationError(
                f"checkpoint {checkpoint_id} was sealed before migration 0005 and has no horizon:"
                " seal a new checkpoint (after a full verify) and start from that one"
            )
        params = {"checkpoint_id": checkpoint_id, "horizon": found[0]["horizon"]}
        problems = _expected_problems(conn, expected)
        checked = 0
        for row in _rows(conn, "verify_rows_since", params):
            checked = row["checked"]
            problems.extend(_row_problems(row))
        problems.extend(_unheaded_problems(_rows(conn, "verify_unheaded_rows_since", params)))
        problems.extend(_head_problem(row) for row in _rows(conn, "verify_heads_since", params))
        problems.extend(_first_moment_problems(_rows(conn, "verify_first_moments_since", params)))
        problems.extend(_checkpoint_problems(_rows(conn, "verify_checkpoints", {"after": checkpoint_id})))
    return problems, checked


def _expected_problems(conn: Connection, expected: Sequence[tuple[int, bytes]]) -> list[Problem]:
    """Each checkpoint noted outside that is missing now, or has another digest."""
    problems = []
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
    return problems


def _unheaded_problems(rows: list[dict[str, Any]]) -> list[Problem]:
    problems = []
    for row in rows:
        if row["head_seq"] is None:
            message = "row in a chain that has no head: it was not appended by the ledger"
        else:
            message = (
                f"row at chain seq {row['chain_seq']} lies past its chain's head (seq {row['head_seq']})"
            )
        problems.append(Problem("inserted", row["chain_key"], row["position"], message))
    return problems


def _checkpoint_problems(rows: list[dict[str, Any]]) -> list[Problem]:
    return [
        Problem(
            "checkpoint",
            None,
            row["max_position"],
            f"checkpoint {row['checkpoint_id']} does not match its sealed heads or its predecessor",
        )
        for row in rows
    ]


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


def _first_moment_problems(rows: list[dict[str, Any]]) -> list[Problem]:
    return [
        Problem(
            "altered",
            row["chain_key"],
            row["head_position"],
            f"the chain's head says it began at {row['first_recorded_at'].isoformat()}, but a row of it"
            f" was recorded at {row['earliest'].isoformat()}: the head was altered",
        )
        for row in rows
    ]


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
