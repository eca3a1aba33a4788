"""History of one reservation, task or worker is an index scan, not a walk through the ledger.

The ledger here holds 50,000 rows (appended set-based through the chain trigger, as the
benchmark does) and fresh statistics; the figures at a million rows are in ops/LEDGER.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.ledger.conftest import open_reader, superuser
from workers.ledger import reader as reader_module
from workers.ledger.connector import connect
from workers.ledger.models import Cursor, Role
from workers.ledger.queries import QUERIES
from workers.ledger.reader import LedgerReader

ROWS = 50_000


@pytest.fixture(scope="module")
def big_reader(db_url: str) -> Iterator[LedgerReader]:
    with superuser(db_url) as conn:
        conn.execute(
            """
            INSERT INTO ledger.events (
                kind, action_id, reservation_sid, workspace_sid, task_sid, worker_sid, from_status,
                to_status, etag_before, etag_after, attempt, http_status, correlation_id, worker_host,
                worker_pid, outcome
            )
            SELECT (ARRAY['received', 'attempt', 'transition', 'outcome'])[1 + g %% 4],
                   md5(g::text)::uuid,
                   'WR' || lpad(to_hex(g / 10), 32, '0'), 'WS' || lpad(to_hex(g %% 3), 32, '0'),
                   'WT' || lpad(to_hex(g / 10), 32, '0'), 'WK' || lpad(to_hex(g %% 500), 32, '0'),
                   'pending', 'accepted', 'e' || g, 'e' || (g + 1), 1, 200, 'c' || (g / 10), 'plan', 1,
                   CASE WHEN g %% 4 = 3 THEN (CASE WHEN g %% 400 = 3 THEN 'failed' ELSE 'applied' END) END
              FROM generate_series(1, %(rows)s) AS g
            """,
            {"rows": ROWS},
        )
        # The registry of the received rows' actions (history by correlation id reads it since 0012).
        conn.execute(
            """
            INSERT INTO ledger.actions (action_id, action, reservation_sid, task_sid, correlation_id)
            SELECT md5(g::text)::uuid, 'accept', 'WR' || lpad(to_hex(g / 10), 32, '0'),
                   'WT' || lpad(to_hex(g / 10), 32, '0'), 'c' || (g / 10)
              FROM generate_series(4, %(rows)s, 4) AS g
            """,
            {"rows": ROWS},
        )
        conn.execute("VACUUM (ANALYZE) ledger.events")  # as autovacuum leaves it: the BRIN summarised
        conn.execute("ANALYZE ledger.actions")
    with open_reader(db_url) as reader:
        yield reader


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def index_used(plan: dict[str, Any]) -> set[str]:
    """The indexes a plan reads, each partition's index named by the ledger's index it belongs to."""
    return {
        PARENT_INDEX.get(node["Index Name"], node["Index Name"])
        for node in nodes(plan)
        if "Index Name" in node
    }


PARENT_INDEX: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def parent_indexes(db_url: str, big_reader: LedgerReader) -> None:
    """ledger.events is partitioned: a plan names the partitions' indexes."""
    with superuser(db_url) as conn:
        rows = conn.execute(
            "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relkind = 'I'"
        ).fetchall()
        filled = conn.execute(
            "SELECT DISTINCT c.relname FROM ledger.events e JOIN pg_class c ON c.oid = e.tableoid"
        ).fetchall()
    PARENT_INDEX.update(dict(rows))
    FILLED.extend(name for (name,) in filled)


def scans(plan: dict[str, Any]) -> set[str]:
    """The kinds of scan a plan makes of the partitions that hold rows (an empty partition made
    ahead of time costs nothing however it is read)."""
    return {node["Node Type"] for node in nodes(plan) if node.get("Relation Name", FILLED[0]) in FILLED}


FILLED: list[str] = ["events"]


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"reservation_sid": "WR" + "0" * 29 + "3e8"}, "events_chain"),
        ({"task_sid": "WT" + "0" * 29 + "3e8"}, "events_task"),
        ({"worker_sid": "WK" + "0" * 29 + "1f3"}, "events_worker"),
        ({"action_id": uuid.UUID("c4ca4238-a0b9-2382-0dcc-509a6f75849b")}, "events_action"),
        ({"correlation_id": "c1000"}, "events_correlation"),
        ({"reservation_sid": "WR" + "0" * 29 + "3e8", "kind": "transition"}, "events_chain"),
        ({"outcome": "failed"}, "events_outcome"),
        # A contact centre has a handful of workspaces: ledger order is as good as an index of its own.
        ({"workspace_sid": "WS" + "0" * 31 + "1"}, "events_ledger_order"),
    ],
)
def test_history_of_one_thing_uses_its_index(
    big_reader: LedgerReader, filters: dict[str, Any], index: str
) -> None:
    plan = big_reader.explain_history(limit=100, **filters)
    assert index in index_used(plan), plan
    assert "Seq Scan" not in scans(plan), plan


@pytest.mark.parametrize(
    ("filters", "indexes"),
    [
        ({"correlation_id": "c1000"}, {"actions_correlation", "events_action", "events_correlation"}),
        ({"task_sid": "WT" + "0" * 29 + "3e8"}, {"actions_task", "events_action", "events_task"}),
    ],
)
def test_history_by_correlation_id_or_task_finds_the_actions_rows_through_the_registry(
    big_reader: LedgerReader, filters: dict[str, Any], indexes: set[str]
) -> None:
    """Since 0012 an action's rows after the received one do not repeat its correlation id or
    task: the registry's index finds its actions, events_action their rows (and the rows that
    hold the value, through their own index)."""
    plan = big_reader.explain_history(limit=100, **filters)
    assert indexes <= index_used(plan), plan
    assert "Seq Scan" not in scans(plan), plan


def test_a_page_of_everything_walks_the_ledger_order_index(big_reader: LedgerReader) -> None:
    plan = big_reader.explain_history(limit=100)
    assert "events_ledger_order" in index_used(plan), plan
    assert "Seq Scan" not in scans(plan), plan


def test_the_chain_index_holds_a_64_bit_key_of_the_chain(db_url: str) -> None:
    """Migration 0012: an entry of the chain index (the ledger's largest) takes the chain key's
    64-bit key, not its 34-character text; readers match both."""
    with superuser(db_url) as conn:
        found = conn.execute("SELECT pg_get_indexdef('ledger.events_chain'::regclass)").fetchone()
    assert found is not None
    assert "key64(chain_key), chain_seq" in found[0], found


def test_a_reservations_actions_are_found_through_the_registrys_64_bit_key(
    big_reader: LedgerReader, db_url: str
) -> None:
    """Migration 0017: actions_reservation holds the reservation SID's 64-bit key; redrive
    --reservation (settled_actions) matches the key and the text, and the index serves it."""
    sid = "WR" + "f" * 32  # a reservation of its own: the module's registry is left as it is
    params = {"outcomes": ["failed"], "reservation_sid": sid, "since": None, "until": None, "limit": 10}
    with superuser(db_url) as conn:
        found = conn.execute("SELECT pg_get_indexdef('ledger.actions_reservation'::regclass)").fetchone()
        assert found is not None
        assert "key64(reservation_sid)" in found[0], found
        expected = [
            row[0]
            for row in conn.execute(
                "INSERT INTO ledger.actions (action_id, action, reservation_sid, outcome, outcome_at)"
                " SELECT gen_random_uuid(), 'accept', %s, 'failed', now() FROM generate_series(1, 3)"
                " RETURNING action_id",
                [sid],
            )
        ]
        explained = conn.execute(f"EXPLAIN (FORMAT JSON) {QUERIES['settled_actions']}", params).fetchone()
        assert explained is not None
    plan: dict[str, Any] = explained[0][0]["Plan"]
    assert "actions_reservation" in index_used(plan), plan
    assert "Seq Scan" not in scans(plan), plan
    chosen = big_reader.settled_actions(["failed"], reservation_sid=sid)
    assert sorted(a.action_id for a in chosen) == sorted(expected)
    assert len(expected) == 3


@pytest.mark.parametrize("query", ["chain_rows", "verify_heads", "verify_sealed_heads"])
def test_a_chain_is_read_through_the_chain_index(big_reader: LedgerReader, db_url: str, query: str) -> None:
    """The console's chain check and verify's look-ups of each chain's head and sealed head match
    the chain key's 64-bit key and the key itself: the chain index serves them (0012)."""
    with superuser(db_url) as conn:
        found = conn.execute(
            f"EXPLAIN (FORMAT JSON) {QUERIES[query]}", {"chain_key": "WR" + "0" * 29 + "3e8"}
        ).fetchone()
    assert found is not None
    plan: dict[str, Any] = found[0][0]["Plan"]
    assert "events_chain" in index_used(plan), plan


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("ledger.key64(chain_key) = ledger.key64('{sid}') AND chain_key = '{sid}'", "events_chain"),
        ("action_id = 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'", "events_action"),
        ("ledger.key64(worker_sid) = ledger.key64('{worker}') AND worker_sid = '{worker}'", "events_worker"),
    ],
)
def test_hand_sql_through_ledger_rows_finds_its_rows_through_the_ledgers_indexes(
    big_reader: LedgerReader, db_url: str, where: str, index: str
) -> None:
    """ledger.rows (0014) is ledger.events and its registry entry: a filter on a column the row
    stores reaches the table's index, as ops/LEDGER.md ("Reading the ledger by hand") says."""
    condition = where.format(sid="WR" + "0" * 29 + "3e8", worker="WK" + "0" * 29 + "1f3")
    with connect(db_url, Role.READER) as conn:
        found = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT * FROM ledger.rows WHERE {condition}").fetchone()
    assert found is not None
    plan: dict[str, Any] = found[0][0]["Plan"]
    assert index in index_used(plan), plan
    assert "Seq Scan" not in scans(plan), plan


def rows_read(plan: dict[str, Any]) -> int:
    """The ledger rows a run of the plan looked at: those its scans returned and those they threw away."""
    return sum(
        (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
        + node.get("Rows Removed by Index Recheck", 0)
        for node in nodes(plan)
        if node.get("Relation Name", "").startswith("events")
    )


def _late_hour(db_url: str) -> tuple[datetime, datetime, int]:
    """A range near the ledger's end: 5,000 rows written after 45,000 others (the planner, taking
    time and ledger order for unrelated, expects a walk of the ledger's order to meet 100 of
    them after a fiftieth of it)."""
    with superuser(db_url) as conn:
        since, until = conn.execute(
            "SELECT min(recorded_at), max(recorded_at) FROM (SELECT recorded_at FROM ledger.events"
            " ORDER BY position OFFSET 45000 LIMIT 5000) AS late"
        ).fetchone() or (None, None)
        assert since is not None
        assert until is not None
        count = conn.execute(
            "SELECT count(*) FROM ledger.events WHERE recorded_at >= %s AND recorded_at < %s", [since, until]
        ).fetchone()
    assert count is not None
    return since, until, count[0]


def test_a_page_of_a_time_range_reads_the_range_not_the_ledger_before_it(
    db_url: str, big_reader: LedgerReader
) -> None:
    since, until, in_range = _late_hour(db_url)
    plan = big_reader.explain_history(limit=100, analyze=True, since=since, until=until)
    # The range's rows and their neighbours on the same pages, never the 45,000 rows before them.
    assert rows_read(plan) < 2 * in_range + 5_000, plan


def test_a_dense_or_a_sparse_time_range_pages_through_the_same_rows(
    db_url: str, big_reader: LedgerReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    since, until, in_range = _late_hour(db_url)
    expected = [row.cursor for row in big_reader.history(limit=ROWS * 2) if since <= row.recorded_at < until]
    assert len(expected) == in_range

    def paged() -> list[Cursor]:
        seen: list[Cursor] = []
        after: Cursor | None = None
        while page := big_reader.history(after=after, limit=70, since=since, until=until):
            seen.extend(row.cursor for row in page)
            after = page[-1].cursor
        return seen

    assert paged() == expected  # the range read first: fewer rows than RANGE_FIRST_ROWS
    monkeypatch.setattr(reader_module, "RANGE_FIRST_ROWS", 50)
    assert paged() == expected  # a range denser than that walks the ledger order
