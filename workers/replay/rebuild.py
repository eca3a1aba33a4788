"""Rebuild the projection from the ledger alone and compare it with the live one."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.ledger import projection
from workers.ledger.connector import connect
from workers.ledger.models import Problem, ReservationState, Role
from workers.ledger.verify import verify


@dataclass(frozen=True, slots=True)
class RebuildReport:
    rebuilt: dict[str, ReservationState]
    differences: list[str]
    replaced: bool = False
    problems: list[Problem] = field(default_factory=list)


def rebuild(database_url: str, *, replace: bool = False, check_chains: bool = False) -> RebuildReport:
    """Fold the ledger's transitions into a projection and diff it with the table.

    With ``replace`` the table is overwritten with the rebuild (needs the owner role); otherwise
    nothing is written, and the reader role is enough. With ``check_chains`` the hash chains are
    verified first, and a ledger that does not verify is neither folded nor trusted.
    """
    with connect(database_url, Role.READER) as conn:
        if check_chains:
            problems = verify(conn)
            if problems:
                return RebuildReport({}, [], problems=problems)
        rebuilt = projection.rebuild(conn)
        found = projection.differences(projection.current(conn), rebuilt)
    if replace and found:
        with connect(database_url, Role.OWNER) as conn:
            projection.replace(conn, rebuilt)
    return RebuildReport(rebuilt, found, replaced=replace and bool(found))
