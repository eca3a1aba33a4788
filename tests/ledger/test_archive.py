"""Archive: months exported, checked against the database and recorded; run twice, the same; the
exports verified offline; a ledger whose archived months are gone still verifies."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from psycopg import sql

from tests.audit.support import TestClient
from tests.ledger.conftest import superuser
from workers.audit.api import AuditApiConfig, create_app
from workers.cli import main
from workers.errors import VerificationError
from workers.ledger import archive
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.verify import verify


def _this_month() -> date:
    return datetime.now(UTC).date().replace(day=1)


def _db_rows(url: str, before: date) -> list[tuple[int, str]]:
    with superuser(url) as conn:
        return [
            (position, bytes(row_hash).hex())
            for position, row_hash in conn.execute(
                "SELECT position, row_hash FROM ledger.events WHERE recorded_at < %s ORDER BY position",
                [datetime(before.year, before.month, 1, tzinfo=UTC)],
            )
        ]


def _file_rows(folder: Path) -> list[tuple[int, str]]:
    rows: list[tuple[int, str]] = []
    for path in sorted(folder.glob("ledger-events-*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            rows.extend((line["position"], line["row_hash"]) for line in map(json.loads, lines))
    return rows


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_archiving_is_idempotent_and_loses_nothing(ledger_url: str, tmp_path: Path) -> None:
    before = _this_month()
    expected = _db_rows(ledger_url, before)
    done = archive.archive_before(ledger_url, before, tmp_path)
    assert len(done) >= 2
    assert all(m.detached for m in done)
    assert _file_rows(tmp_path) == expected  # row by row, in position order
    assert sum(m.row_count for m in done) == len(expected)
    assert archive.verify_archive(tmp_path) == ([], len(done))
    assert _db_rows(ledger_url, before) == []  # detached from ledger.events ...
    with superuser(ledger_url) as conn:  # ... and kept, whole, in their own tables
        kept = [
            (position, bytes(row_hash).hex())
            for m in done
            for position, row_hash in conn.execute(
                sql.SQL("SELECT position, row_hash FROM ledger.{}").format(
                    sql.Identifier(archive.partition_name(m.month))
                )
            )
        ]
        recorded = conn.execute(
            "SELECT month, row_count, sha256 FROM ledger.archives ORDER BY month"
        ).fetchall()
    assert sorted(kept) == expected
    assert [(r[0], r[1], bytes(r[2]).hex()) for r in recorded] == [
        (m.month, m.row_count, m.sha256) for m in done
    ]
    with connect(ledger_url, Role.READER) as conn:
        assert verify(conn) == []
    # Twice: nothing new, nothing rewritten, nothing recorded again.
    written = _digests(tmp_path)
    assert archive.archive_before(ledger_url, before, tmp_path) == []
    assert _digests(tmp_path) == written
    with superuser(ledger_url) as conn:
        again = conn.execute("SELECT count(*) FROM ledger.archives").fetchone()
    assert again == (len(done),)


def test_the_ledger_still_verifies_once_archived_months_are_gone(ledger_url: str, tmp_path: Path) -> None:
    """After the detach, each chain picks up from its last archived row (without that, every
    chain would be reported cut at its first remaining row)."""
    before = _this_month()
    done = archive.archive_before(ledger_url, before, tmp_path)
    with superuser(ledger_url) as conn:
        left = conn.execute("SELECT count(*) FROM ledger.events").fetchone()
    assert left is not None
    assert left[0] > 0
    with connect(ledger_url, Role.READER) as conn:
        assert verify(conn) == []
    # A remaining row that no longer follows its archived predecessor is still found.
    with superuser(ledger_url) as conn:
        conn.execute("SET session_replication_role = replica")
        first = conn.execute("SELECT min(position) FROM ledger.events").fetchone()
        assert first is not None
        conn.execute(
            "UPDATE ledger.events e SET prev_hash = decode(repeat('22', 32), 'hex') WHERE position = %s; ",
            [first[0]],
        )
        conn.execute(
            "UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = %s", [first[0]]
        )
    with connect(ledger_url, Role.READER) as conn:
        assert ("broken_link", first[0]) in [(p.kind, p.position) for p in verify(conn)]
    assert done


def _rewrite(folder: Path, month: date, change: Any) -> None:
    """Apply ``change`` to the month's lines, and fix the manifest's digests and count (as a
    forger would)."""
    events, _, manifest_name = archive.file_names(month)
    path = folder / events
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    rows = change(rows)
    with gzip.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    manifest = json.loads((folder / manifest_name).read_text())
    manifest["events"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["rows"] = len(rows)
    manifest["rows_digest"] = hashlib.sha256(b"".join(bytes.fromhex(r["row_hash"]) for r in rows)).hexdigest()
    (folder / manifest_name).write_text(json.dumps(manifest))


def _altered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[3]["canonical"] = rows[3]["canonical"].replace("applied", "failed").replace("accept", "reject")
    return rows


def _removed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row in the middle of its chain."""
    later = {(r["chain_key"], r["chain_seq"]) for r in rows}
    victim = next(r for r in rows if r["chain_seq"] > 1 and (r["chain_key"], r["chain_seq"] + 1) in later)
    return [r for r in rows if r is not victim]


def _moved(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[2]["position"] += 1
    return rows


@pytest.mark.parametrize(
    ("change", "found", "month"),
    [
        (_altered, "altered", 0),
        # The last archived month: a whole month inside the span, where chains have rows after
        # their first (the removed row's chain is followed from the months before). The first month
        # starts when the ledger does, 90 days ago (three more in a month's last three days: the
        # ledger_url fixture), on any day of its month: it holds a chain's third row only when it
        # is 30 days or more (a reservation's six rows are 15 days apart).
        (_removed, "missing before it", -1),
        (_moved, "differs from its canonical text", 0),
    ],
)
def test_a_tampered_export_is_found_offline(
    ledger_url: str, tmp_path: Path, change: Any, found: str, month: int
) -> None:
    done = archive.archive_before(ledger_url, _this_month(), tmp_path)
    _rewrite(tmp_path, done[month].month, change)
    problems, _ = archive.verify_archive(tmp_path)
    assert any(found in p for p in problems), problems
    # Every month, oldest first: a chain is followed from one month into the next.
    result = CliRunner().invoke(main, ["ledger", "verify", "--archive", str(tmp_path)])
    assert result.exit_code == 1
    assert "archive verification FAILED" in result.output


def test_a_file_changed_behind_the_manifest_is_found(ledger_url: str, tmp_path: Path) -> None:
    done = archive.archive_before(ledger_url, _this_month(), tmp_path)
    heads = tmp_path / archive.file_names(done[-1].month)[1]
    heads.write_bytes(gzip.compress(b""))
    problems, _ = archive.verify_archive(tmp_path)
    assert any("SHA-256 is not the manifest's" in p for p in problems)
    assert any("does not list every chain" in p for p in problems)


def test_the_commands(ledger_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    before = f"{_this_month():%Y-%m}"
    first = runner.invoke(
        main, ["ledger", "archive", "--before", before, "--to", str(tmp_path), "--database-url", ledger_url]
    )
    assert first.exit_code == 0, first.output
    assert "archived " in first.output
    second = runner.invoke(
        main, ["ledger", "archive", "--before", before, "--to", str(tmp_path), "--database-url", ledger_url]
    )
    assert second.exit_code == 0, second.output
    assert "nothing to archive" in second.output
    checked = runner.invoke(main, ["ledger", "verify", "--archive", str(tmp_path)])
    assert checked.exit_code == 0, checked.output
    assert "archive verified" in checked.output
    unfinished = f"{(_this_month() + timedelta(days=40)):%Y-%m}"
    refused = runner.invoke(
        main,
        ["ledger", "archive", "--before", unfinished, "--to", str(tmp_path), "--database-url", ledger_url],
    )
    assert refused.exit_code == 2
    assert "not over yet" in refused.output
    bad = runner.invoke(main, ["ledger", "archive", "--before", "2026-13", "--to", str(tmp_path)])
    assert bad.exit_code == 2


def test_an_unfinished_month_is_refused(ledger_url: str, tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="not over yet"):
        archive.archive_before(ledger_url, archive.next_month(_this_month()), tmp_path)


def test_history_the_api_and_the_console_say_when_a_query_reaches_archived_months(
    ledger_url: str, tmp_path: Path
) -> None:
    before = _this_month()
    done = archive.archive_before(ledger_url, before, tmp_path)
    oldest = f"{done[0].month:%Y-%m}"
    runner = CliRunner()
    reached = runner.invoke(
        main, ["history", "--since", f"{oldest}-02T00:00:00Z", "--limit", "1", "--database-url", ledger_url]
    )
    assert reached.exit_code == 0, reached.output
    assert f"reaches into archived months ({oldest}" in reached.output
    this_month = f"{before:%Y-%m}-01T00:00:00Z"
    recent = runner.invoke(main, ["history", "--since", this_month, "--database-url", ledger_url])
    assert recent.exit_code == 0, recent.output
    assert "archived" not in recent.output
    app = create_app(AuditApiConfig(ledger_url, "archive-test-token", pool_max=2))
    with TestClient(app, headers={"Authorization": "Bearer archive-test-token"}) as client:
        page = client.get("/v1/events", params={"since": f"{oldest}-02T00:00:00Z", "limit": 5}).json()
        assert page["archived_months"][0] == oldest
        assert "no longer in the ledger" in page["notice"]
        later = client.get("/v1/events", params={"since": f"{before:%Y-%m}-01T00:00:00Z", "limit": 5}).json()
        assert later["archived_months"] == []
        assert later["notice"] is None
        everything = client.get("/v1/events", params={"limit": 5}).json()
        assert len(everything["archived_months"]) == len(done)
        console = client.get("/ui/search", params={"since": f"{oldest}-02T00:00"})
        assert console.status_code == 200
        assert 'id="archived-notice"' in console.text
