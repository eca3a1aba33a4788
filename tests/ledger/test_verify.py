"""Tamper evidence: verify finds each altered, removed and inserted row, with its position.

The tampering is done as a superuser with the guards switched off (session_replication_role =
replica), which is what an attacker with full database access could do.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
from click.testing import CliRunner

from tests.ledger.conftest import accept_applied, make_action, open_writer, superuser
from workers.cli import main
from workers.ledger.connector import connect, drop_database, ensure_database, with_database
from workers.ledger.events import Transition
from workers.ledger.migrations import known_migrations, migrate
from workers.ledger.models import Checkpoint, LedgerRow, Outcome, Problem, Role, Source
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import seal_checkpoint, verify
from workers.ledger.writer import PostgresLedgerWriter


def _fill(writer: PostgresLedgerWriter, reader: LedgerReader, reservations: int = 3) -> list[LedgerRow]:
    for _ in range(reservations):
        action = make_action()
        accept_applied(writer, action, with_attempt=True)
    return reader.history()


def _problems(url: str) -> list[Problem]:
    with connect(url, Role.READER) as conn:
        return verify(conn)


def _seal(url: str) -> Checkpoint:
    with connect(url, Role.WRITER) as conn:
        return seal_checkpoint(conn)


def _tamper(url: str, statements: str, *params: object) -> None:
    """Run ``;``-separated statements with the guards off; ``params`` fill their %s in order."""
    remaining = list(params)
    with superuser(url) as conn:
        conn.execute("SET session_replication_role = replica")
        for statement in statements.split("; "):
            count = statement.count("%s")
            conn.execute(statement, remaining[:count])
            remaining = remaining[count:]


def test_an_intact_ledger_verifies(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader)
    _seal(fresh_db_url)
    _fill(fresh_writer, fresh_reader, 1)
    assert _problems(fresh_db_url) == []
    result = CliRunner().invoke(main, ["ledger", "verify", "--checkpoint", "--database-url", fresh_db_url])
    assert result.exit_code == 0, result.output
    assert "checkpoint 2" in result.output


def test_an_altered_row_is_found_at_its_position(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    victim = rows[4]
    _tamper(fresh_db_url, "UPDATE ledger.events SET http_status = 500 WHERE position = %s", victim.position)
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("altered", victim.position)]
    result = CliRunner().invoke(main, ["ledger", "verify", "--database-url", fresh_db_url])
    assert result.exit_code == 1
    assert f"altered at position {victim.position}" in result.output


def test_an_altered_row_with_a_recomputed_hash_breaks_the_next_link(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    victim = rows[1]
    _tamper(
        fresh_db_url,
        "UPDATE ledger.events e SET http_status = 500 WHERE position = %s;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = %s",
        victim.position,
        victim.position,
    )
    found = [(p.kind, p.position) for p in _problems(fresh_db_url)]
    following = next(
        r for r in rows if r.chain_key == victim.chain_key and r.chain_seq == victim.chain_seq + 1
    )
    assert found == [("broken_link", following.position)]


def test_a_removed_row_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    victim = rows[1]
    _tamper(fresh_db_url, "DELETE FROM ledger.events WHERE position = %s", victim.position)
    following = next(
        r for r in rows if r.chain_key == victim.chain_key and r.chain_seq == victim.chain_seq + 1
    )
    problems = _problems(fresh_db_url)
    assert [(p.kind, p.position) for p in problems] == [("removed", following.position)]
    assert f"chain seq {following.chain_seq}" in problems[0].message


def test_a_removed_tail_is_found_at_the_heads_position(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    last = max((r for r in rows if r.chain_key == rows[0].chain_key), key=lambda r: r.chain_seq)
    _tamper(fresh_db_url, "DELETE FROM ledger.events WHERE position = %s", last.position)
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("removed", last.position)]


def test_a_removed_chain_is_found_through_the_checkpoint(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    _seal(fresh_db_url)
    chain = rows[0].chain_key
    head = max(r.position for r in rows if r.chain_key == chain)
    _tamper(
        fresh_db_url,
        "DELETE FROM ledger.events WHERE chain_key = %s; DELETE FROM ledger.chain_heads WHERE chain_key = %s",
        chain,
        chain,
    )
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("removed", head)]


def test_an_inserted_row_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    rows = _fill(fresh_writer, fresh_reader)
    head = max((r for r in rows if r.chain_key == rows[0].chain_key), key=lambda r: r.chain_seq)
    # A well-forged row: right sequence number, right link, right hash. Only the head betrays it.
    _tamper(
        fresh_db_url,
        "INSERT INTO ledger.events (position, tx_id, recorded_at, chain_key, chain_seq, prev_hash, row_hash,"
        " kind, reservation_sid, outcome)"
        " SELECT 1000, '1', now(), chain_key, chain_seq + 1, row_hash, '\\x', 'outcome', reservation_sid,"
        " 'failed'"
        " FROM ledger.events WHERE position = %s;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = 1000",
        head.position,
    )
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("inserted", 1000)]


def test_a_row_inserted_in_a_new_chain_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 1)
    _tamper(
        fresh_db_url,
        "INSERT INTO ledger.events (position, tx_id, recorded_at, chain_key, chain_seq, prev_hash, row_hash,"
        " kind, reservation_sid) VALUES (2000, '1', now(), 'WRnew', 1, '\\x', '\\x', 'transition', 'WRnew');"
        " UPDATE ledger.events e SET prev_hash = decode(repeat('00', 32), 'hex') WHERE position = 2000;"
        " UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = 2000",
    )
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("inserted", 2000)]


def test_a_tampered_checkpoint_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 2)
    _seal(fresh_db_url)
    _tamper(fresh_db_url, "UPDATE ledger.checkpoint_heads SET chain_seq = chain_seq + 1")
    kinds = {p.kind for p in _problems(fresh_db_url)}
    assert "checkpoint" in kinds
    assert "removed" in kinds


def test_the_canonical_serialisation_is_stable(fresh_db_url: str) -> None:
    """A known answer: the row's text form, then sha256(prev_hash || text). Changing it breaks chains."""
    row = (
        "ROW(42, '7'::xid8, '2026-01-02 03:04:05.123456+00', 'WRabc', 3, decode(repeat('ab', 32), 'hex'),"
        " '\\x'::bytea, 'transition', '6f9619ff-8b86-d011-b42d-00c04fc964ff', 'accept', 'WSx', 'WRabc', NULL,"
        " 'WK y', 'pending', 'accepted', '\"e1\"', 'e,2', 1, 200, NULL, 'RQ', 12, 'applied', 'host', 9,"
        " 'c', 'p', '{\"to\": \"hmac-sha256:00\", \"timeout\": 30}', NULL, NULL, NULL)::ledger.events"
    )
    expected = (
        "(1,42,7,WRabc,3,1767323045123456,transition,6f9619ff-8b86-d011-b42d-00c04fc964ff,accept,WSx,WRabc,,"
        '"WK y",pending,accepted,"""e1""","e,2",1,200,,RQ,12,applied,host,9,c,p,'
        '"{""to"": ""hmac-sha256:00"", ""timeout"": 30}",)'
    )
    with superuser(fresh_db_url) as conn:
        conn.execute("SET TimeZone = 'America/New_York'")
        found = conn.execute(f"SELECT ledger.event_canonical({row}), ledger.event_hash({row})").fetchone()
    assert found is not None
    assert found[0] == expected
    assert found[1] == hashlib.sha256(bytes.fromhex("ab" * 32) + expected.encode()).digest()
    # Version 2 (0003): the same fields led by 2, then source and trace_id, once either is set.
    row_v2 = row.replace("NULL, NULL, NULL)::", f"NULL, 'event', '{TRACE}')::")
    expected_v2 = "(2" + expected[2:-1] + f",event,{TRACE})"
    with superuser(fresh_db_url) as conn:
        found = conn.execute(
            f"SELECT ledger.event_canonical({row_v2}), ledger.event_hash({row_v2})"
        ).fetchone()
    assert found is not None
    assert found[0] == expected_v2
    assert found[1] == hashlib.sha256(bytes.fromhex("ab" * 32) + expected_v2.encode()).digest()


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "change",
    [
        "source = 'fetch'",
        "trace_id = '0af7651916cd43dd8448eb211c80319c'",
        "source = NULL, trace_id = NULL",  # back to version 1's form: a different text, so a different hash
        "source = NULL",
    ],
)
def test_an_altered_source_or_trace_id_is_found(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str, change: str
) -> None:
    action = make_action()
    fresh_writer.receive(action, trace_id=TRACE)
    fresh_writer.append(
        Transition(
            action.reservation_sid,
            from_status="pending",
            to_status="accepted",
            etag_before="1",
            etag_after="2",
            action_id=action.action_id,
            outcome=Outcome.APPLIED,
            source=Source.ACTION,
            trace_id=TRACE,
        )
    )
    victim = next(r for r in fresh_reader.history() if r.kind == "transition")
    assert (victim.source, victim.trace_id) == ("action", TRACE)
    assert _problems(fresh_db_url) == []
    _tamper(fresh_db_url, f"UPDATE ledger.events SET {change} WHERE position = %s", victim.position)
    assert [(p.kind, p.position) for p in _problems(fresh_db_url)] == [("altered", victim.position)]


def test_chains_written_before_0003_still_verify_after_it(admin_url: str) -> None:
    """Rows appended by the 0002 schema (canonical version 1), then 0003 applied, then new rows
    (version 2) on the same chain: the whole chain verifies, and tampering an old row is found."""
    url = with_database(admin_url, f"ledger_v1_{uuid.uuid4().hex[:8]}")
    ensure_database(url)
    try:
        with superuser(url) as conn:
            for migration in known_migrations()[:2]:
                with conn.transaction():
                    conn.execute(migration.text.encode())
                    conn.execute(
                        "INSERT INTO ledger.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        [migration.version, migration.name, migration.checksum],
                    )
        action = make_action()
        with connect(url, Role.WRITER) as conn:  # the 0002 functions, by their 0002 signatures
            conn.execute(
                "SELECT ledger.record_received(%s, 'accept', %s, %s, NULL, NULL, NULL, NULL, NULL, NULL,"
                " NULL, 'old', 1)",
                [action.action_id, action.workspace_sid, action.reservation_sid],
            )
            conn.execute(
                "SELECT * FROM ledger.record_transition(%s, %s, NULL, NULL, NULL, 'pending', 'accepted',"
                " '1', '2', 1, 200, NULL, NULL, 'applied', NULL, 'old', 1)",
                [action.action_id, action.reservation_sid],
            )
        assert [str(m) for m in migrate(url)] == [str(m) for m in known_migrations()[2:]]
        with open_writer(url) as writer:
            writer.append(
                Transition(
                    action.reservation_sid,
                    from_status="accepted",
                    to_status="wrapping",
                    etag_before="2",
                    etag_after="3",
                    trace_id=TRACE,
                )
            )
        with superuser(url) as conn:
            versions = [
                row[0][:2]
                for row in conn.execute(
                    "SELECT ledger.event_canonical(e) FROM ledger.events e ORDER BY position"
                )
            ]
        assert versions == ["(1", "(1", "(1", "(2"]
        assert _problems(url) == []
        _tamper(url, "UPDATE ledger.events SET worker_host = 'forged' WHERE position = 1")
        assert [(p.kind, p.position) for p in _problems(url)] == [("altered", 1)]
    finally:
        drop_database(url)


def test_a_checkpoint_noted_outside_must_still_match(
    fresh_writer: PostgresLedgerWriter, fresh_reader: LedgerReader, fresh_db_url: str
) -> None:
    _fill(fresh_writer, fresh_reader, 2)
    sealed = _seal(fresh_db_url)
    noted = f"{sealed.checkpoint_id}:{sealed.digest.hex()}"
    runner = CliRunner()
    command = ["ledger", "verify", "--database-url", fresh_db_url, "--expect-checkpoint"]
    ok = runner.invoke(main, [*command, noted])
    assert ok.exit_code == 0, ok.output
    wrong = f"{sealed.checkpoint_id}:{'00' * 32}"
    bad = runner.invoke(main, [*command, wrong])
    assert bad.exit_code == 1
    assert f"checkpoint {sealed.checkpoint_id} has digest {sealed.digest.hex()}" in bad.output
    missing = runner.invoke(main, [*command, f"99:{'00' * 32}"])
    assert missing.exit_code == 1
    assert "checkpoint 99 is missing" in missing.output
