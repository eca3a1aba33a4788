"""``reservations ledger archive`` and ``ledger verify --archive``: months of the ledger exported,
checked and detached, and their exports verified offline.

A month's export is two gzip files of JSON lines and a manifest, in one folder:

* ``ledger-events-YYYY-MM.jsonl.gz``: one row per line, in position order: ``position``,
  ``chain_key``, ``chain_seq``, ``prev_hash`` and ``row_hash`` (hex), ``canonical`` (the text the
  row's hash covers, ``ledger.event_canonical``) and ``row`` (every column, for people);
* ``ledger-heads-YYYY-MM.jsonl.gz``: each chain's last row of the month, and its head sealed by
  the archive's checkpoint or before (``sealed_seq``, ``sealed_hash``);
* ``ledger-events-YYYY-MM.manifest.json``: the files' SHA-256, the rows, the first and last
  positions, the SHA-256 of the row hashes in position order, and the checkpoint (id, digest, the
  digest it follows, its top position).

Offline, every row's hash is recomputed from its canonical text, every chain's links are followed
(across the months of the folder, oldest first), and each head sealed inside the month must be
the archived row. The gzip files are written with no time in their header, so an archive run
twice writes the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from workers.errors import VerificationError
from workers.ledger.connector import Connection, connect, translated
from workers.ledger.models import Checkpoint, Role
from workers.ledger.queries import QUERIES
from workers.ledger.verify import seal_checkpoint

MANIFEST_VERSION = 1
ZERO = "00" * 32
# ASCII digits, the whole text: "\d" takes any Unicode digit and "$" a trailing newline.
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
# The first five fields of a canonical text: version, position, tx_id, chain_key, chain_seq.
_PREFIX = re.compile(r'^\((\d+),(\d+),(\d+),("(?:[^"\\]|""|\\.)*"|[^,"]*),(\d+),')


@dataclass(frozen=True, slots=True)
class ArchivedMonth:
    month: date
    row_count: int
    file_name: str
    sha256: str
    checkpoint_id: int
    detached: bool


def parse_month(text: str) -> date:
    """``YYYY-MM`` as the first day of that month; ValueError otherwise."""
    found = _MONTH.fullmatch(text)
    if found is None or not 1 <= int(found.group(2)) <= 12:
        raise ValueError(f"expected a month as YYYY-MM, not {text!r}")
    return date(int(found.group(1)), int(found.group(2)), 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def bounds(month: date) -> dict[str, datetime]:
    """The month as [start, end) in UTC, the query parameters of every archive query."""
    end = next_month(month)
    return {
        "start": datetime(month.year, month.month, 1, tzinfo=UTC),
        "end": datetime(end.year, end.month, 1, tzinfo=UTC),
    }


def file_names(month: date) -> tuple[str, str, str]:
    """The events file, the heads file and the manifest of ``month``."""
    stem = f"{month:%Y-%m}"
    return (
        f"ledger-events-{stem}.jsonl.gz",
        f"ledger-heads-{stem}.jsonl.gz",
        f"ledger-events-{stem}.manifest.json",
    )


def partition_name(month: date) -> str:
    """The partition of ``month``: ``ledger.events_YYYY_MM`` (migration 0004)."""
    return f"events_{month:%Y_%m}"


def _line(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


def _write_gzip(path: Path, lines: Iterator[bytes]) -> str:
    """Write ``lines`` to ``path`` (through a temporary file, renamed), gzip with no timestamp;
    the file's SHA-256."""
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    with partial.open("wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            for line in lines:
                out.write(line)
        raw.flush()
        os.fsync(raw.fileno())
    with partial.open("rb") as written:
        for chunk in iter(lambda: written.read(1 << 20), b""):
            digest.update(chunk)
    partial.replace(path)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as read:
        for chunk in iter(lambda: read.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(conn: Connection, query: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A query's rows through a server-side cursor (a month does not fit in memory)."""
    with conn.transaction(), conn.cursor(name="archive", row_factory=dict_row) as cur:
        cur.itersize = 5000
        cur.execute(QUERIES[query], params)
        yield from cur


def _checkpoint_fields(conn: Connection, checkpoint: Checkpoint) -> dict[str, Any]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(
            QUERIES["checkpoint_prev_digest"], {"checkpoint_id": checkpoint.checkpoint_id}
        ).fetchone()
    return {
        "id": checkpoint.checkpoint_id,
        "digest": checkpoint.digest.hex(),
        "prev_digest": found["prev_digest"] if found else None,
        "max_position": checkpoint.max_position,
        "chains": checkpoint.chains,
    }


def export_month(conn: Connection, month: date, checkpoint: Checkpoint, folder: Path) -> dict[str, Any]:
    """Write ``month``'s files and manifest to ``folder``, check them against the database, and
    return the manifest. Raises VerificationError when the files do not match the database."""
    events_name, heads_name, manifest_name = file_names(month)
    params = {**bounds(month), "checkpoint_id": checkpoint.checkpoint_id}
    events_sha = _write_gzip(
        folder / events_name, (_line(dict(row)) for row in _stream(conn, "archive_rows", params))
    )
    heads_sha = _write_gzip(
        folder / heads_name, (_line(dict(row)) for row in _stream(conn, "archive_heads", params))
    )
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        summary = cur.execute(QUERIES["archive_summary"], params).fetchone()
    assert summary is not None
    manifest = {
        "v": MANIFEST_VERSION,
        "month": f"{month:%Y-%m}",
        "events": {"file": events_name, "sha256": events_sha},
        "heads": {"file": heads_name, "sha256": heads_sha},
        "rows": summary["row_count"],
        "first_position": summary["first_position"],
        "last_position": summary["last_position"],
        "rows_digest": summary["rows_digest"].hex(),
        "checkpoint": _checkpoint_fields(conn, checkpoint),
    }
    (folder / manifest_name).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    # The export against the database: read back from disk, every hash recomputed.
    problems = verify_manifest(folder / manifest_name)
    if problems:
        raise VerificationError(f"the export of {month:%Y-%m} does not verify: {problems[0]}")
    return manifest


def _check_unchanged(conn: Connection, month: date, manifest: dict[str, Any]) -> None:
    """The month's rows are still those exported. A row written before the month ended may commit
    after the export read the month (its writer was in flight at midnight): detached unexported,
    it would be lost to the archive. The caller locks the partition against writes first (SHARE:
    only such late writers wait, and the lock waits for them), so what is checked is what the
    detach takes."""
    with conn.cursor(row_factory=dict_row) as cur:
        now = cur.execute(QUERIES["archive_summary"], bounds(month)).fetchone()
    assert now is not None
    if (now["row_count"], now["rows_digest"].hex()) != (manifest["rows"], manifest["rows_digest"]):
        raise VerificationError(
            f"{month:%Y-%m} changed while it was archived ({now['row_count']} row(s) now, {manifest['rows']}"
            " exported: a writer committed a row of that month meanwhile); nothing was recorded or"
            " detached: run the archive again"
        )


def months_to_archive(conn: Connection, before: date) -> list[date]:
    """The months before ``before`` that hold rows and are not archived yet, oldest first."""
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        first = cur.execute(QUERIES["archive_first_month"]).fetchone()
        done = {row["month"] for row in cur.execute(QUERIES["archived_months"]).fetchall()}
    months = []
    month = first["month"] if first else before
    while month < before:
        if month not in done:
            months.append(month)
        month = next_month(month)
    return months


def _partition_of(conn: Connection, month: date) -> tuple[str, date, date] | None:
    """The partition of ledger.events that holds ``month`` (its name and months [lower, upper)),
    or None when the month's rows are in the DEFAULT partition or the ledger is not partitioned."""
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(QUERIES["archive_partition"], bounds(month)).fetchone()
    if found is None:
        return None
    return found["partition_name"], found["lower_month"], found["upper_month"]


def _default_partition(conn: Connection) -> str | None:
    """The DEFAULT partition of ledger.events (a month without a partition of its own keeps its
    rows there), or None when the ledger is not partitioned."""
    found = conn.execute(QUERIES["events_default_partition"]).fetchone()
    return str(found[0]) if found else None


def _groups(conn: Connection, months: list[date], before: date) -> list[tuple[str | None, list[date]]]:
    """``months`` in the groups that are recorded (and detached) together: the months of one
    partition (a partition is detached whole), or a month whose rows stay (DEFAULT partition, or
    no partitions). Raises VerificationError when the partition of a month reaches past
    ``before``: detaching it would take months that are not exported."""
    groups: list[tuple[str | None, list[date]]] = []
    for month in months:
        found = _partition_of(conn, month)
        if found is None:
            groups.append((None, [month]))
            continue
        name, lower, upper = found
        if upper > before:
            if groups:
                break  # the months before it are archived; this partition waits for its last month
            raise VerificationError(
                f"ledger.{name} holds {lower:%Y-%m} to {upper:%Y-%m} (exclusive), and is detached"
                f" whole: archive with --before {upper:%Y-%m} or later once that month is over"
            )
        if groups and groups[-1][0] == name:
            groups[-1][1].append(month)
        else:
            groups.append((name, [month]))
    return groups


def archive_before(url: str, before: date, folder: Path, *, now: date | None = None) -> list[ArchivedMonth]:
    """Archive every month before ``before`` not archived yet: seal a checkpoint, export each month,
    verify the export against the database, then record the months of a partition and detach it
    in one transaction (a month in the DEFAULT partition, or a ledger that is not partitioned,
    keeps its rows: exported, verified, recorded). A partition of several months waits until all
    of them are before ``before``. Run again, it archives nothing new and rewrites nothing. Needs
    the owner role."""
    current = (now or datetime.now(UTC).date()).replace(day=1)
    if before > current:
        raise VerificationError(
            f"{before:%Y-%m} is not over yet: only months before {current:%Y-%m} can be archived"
        )
    folder.mkdir(parents=True, exist_ok=True)
    done: list[ArchivedMonth] = []
    with connect(url, Role.OWNER) as conn:
        with translated():
            groups = _groups(conn, months_to_archive(conn, before), before)
        if not groups:
            return done
        with translated():
            checkpoint = seal_checkpoint(conn)
        for partition, months in groups:
            manifests = [export_month(conn, month, checkpoint, folder) for month in months]
            with translated(), conn.transaction():
                # The detach waits for every statement on ledger.events and holds up new ones
                # meanwhile: give up rather than stall the workers (run it again later).
                conn.execute("SET LOCAL lock_timeout = '10s'")
                locked = partition if partition is not None else _default_partition(conn)
                if locked is not None:
                    conn.execute(sql.SQL("LOCK TABLE ledger.{} IN SHARE MODE").format(sql.Identifier(locked)))
                for month, manifest in zip(months, manifests, strict=True):
                    _check_unchanged(conn, month, manifest)
                    conn.execute(
                        QUERIES["record_archive"],
                        {
                            **bounds(month),
                            "month": month,
                            "checkpoint_id": checkpoint.checkpoint_id,
                            "row_count": manifest["rows"],
                            "first_position": manifest["first_position"],
                            "last_position": manifest["last_position"],
                            "file_name": manifest["events"]["file"],
                            "sha256": bytes.fromhex(manifest["events"]["sha256"]),
                            "manifest": Jsonb(manifest),
                            "detached": partition is not None,
                        },
                    )
                if partition is not None:
                    conn.execute(
                        sql.SQL("ALTER TABLE ledger.events DETACH PARTITION ledger.{}").format(
                            sql.Identifier(partition)
                        )
                    )
            done.extend(
                ArchivedMonth(
                    month,
                    manifest["rows"],
                    manifest["events"]["file"],
                    manifest["events"]["sha256"],
                    checkpoint.checkpoint_id,
                    partition is not None,
                )
                for month, manifest in zip(months, manifests, strict=True)
            )
    return done


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)


def _canonical_problem(line: dict[str, Any]) -> str | None:
    """Whether the canonical text says the same position, chain and sequence as the line."""
    found = _PREFIX.match(line["canonical"])
    if found is None:
        return "its canonical text is not a ledger row"
    key = found.group(4)
    if key.startswith('"'):
        key = key[1:-1].replace('""', '"').replace("\\\\", "\\")
    if (int(found.group(2)), key, int(found.group(5))) != (
        line["position"],
        line["chain_key"],
        line["chain_seq"],
    ):
        return "its position, chain or sequence differs from its canonical text"
    return None


def verify_manifest(path: Path, chains: dict[str, tuple[int, str]] | None = None) -> list[str]:
    """Everything wrong with one month's export, offline: file digests, rows, each row's hash,
    chain links (from ``chains``: each chain's last (seq, hash) in the months before, updated),
    and the heads sealed inside the month."""
    chains = {} if chains is None else chains
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("v") != MANIFEST_VERSION:
            return [f"{path.name}: unknown manifest version {manifest.get('v')!r}"]
        events, heads = path.parent / manifest["events"]["file"], path.parent / manifest["heads"]["file"]
        problems = [
            f"{file.name}: its SHA-256 is not the manifest's"
            for file, noted in ((events, manifest["events"]["sha256"]), (heads, manifest["heads"]["sha256"]))
            if _file_sha256(file) != noted
        ]
        rows, digest, last = 0, hashlib.sha256(), {}
        for line in _read_lines(events):
            rows += 1
            where = f"{events.name}: position {line['position']}"
            digest.update(bytes.fromhex(line["row_hash"]))
            computed = hashlib.sha256(
                bytes.fromhex(line["prev_hash"]) + line["canonical"].encode()
            ).hexdigest()
            if computed != line["row_hash"]:
                problems.append(f"{where}: content does not match its hash (altered)")
            if (wrong := _canonical_problem(line)) is not None:
                problems.append(f"{where}: {wrong}")
            seq, link = chains.get(line["chain_key"], (0, ZERO))
            if line["chain_key"] in chains or line["chain_seq"] == 1:
                if line["chain_seq"] != seq + 1:
                    problems.append(
                        f"{where}: {line['chain_seq'] - seq - 1} row(s) of its chain missing before it"
                    )
                elif line["prev_hash"] != link:
                    problems.append(f"{where}: does not follow the previous row of its chain (broken link)")
            chains[line["chain_key"]] = (line["chain_seq"], line["row_hash"])
            last[line["chain_key"]] = (line["chain_seq"], line["row_hash"])
        if rows != manifest["rows"]:
            problems.append(f"{events.name}: {rows} rows, the manifest says {manifest['rows']}")
        if digest.hexdigest() != manifest["rows_digest"]:
            problems.append(f"{events.name}: its row hashes are not those the database held")
        for head in _read_lines(heads):
            ours = last.get(head["chain_key"])
            if ours != (head["chain_seq"], head["row_hash"]):
                problems.append(
                    f"{heads.name}: chain {head['chain_key']} does not end on its listed last row"
                )
            sealed = head.get("sealed_seq")
            if sealed is not None and sealed == head["chain_seq"] and head["sealed_hash"] != head["row_hash"]:
                problems.append(
                    f"{heads.name}: chain {head['chain_key']}: the head sealed by checkpoint"
                    f" {manifest['checkpoint']['id']} is not the archived row"
                )
        if len(last) != sum(1 for _ in _read_lines(heads)):
            problems.append(f"{heads.name}: does not list every chain of the month")
    except (OSError, ValueError, KeyError, TypeError, EOFError, gzip.BadGzipFile) as exc:
        return [f"{path.name}: cannot be read: {exc}"]
    return problems


def verify_archive(path: Path) -> tuple[list[str], int]:
    """Verify a manifest, or every manifest of a folder (oldest month first, chains followed from
    one month to the next); the problems and the number of months checked."""
    manifests = _manifests(path)
    chains: dict[str, tuple[int, str]] = {}
    problems = []
    for manifest in manifests:
        problems.extend(verify_manifest(manifest, chains))
    return problems, len(manifests)


def _manifests(path: Path) -> list[Path]:
    manifests = sorted(path.glob("ledger-events-*.manifest.json")) if path.is_dir() else [path]
    if not manifests:
        raise VerificationError(f"{path} holds no archive manifest")
    return manifests


def recorded_problems(conn: Connection, path: Path) -> list[str]:
    """Each manifest under ``path`` that is not the one the database recorded when it archived
    that month (``ledger.archives``, append-only). With the offline check (the files' digests are
    the manifest's), this catches an export rewritten together with its manifest, which the
    offline check alone cannot tell from the original."""
    problems = []
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        for manifest_path in _manifests(path):
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                month = parse_month(str(manifest["month"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{manifest_path.name}: cannot be read: {exc}")
                continue
            found = cur.execute(QUERIES["recorded_archive"], {"month": month}).fetchone()
            if found is None:
                problems.append(
                    f"{manifest_path.name}: the database has no record of archiving {month:%Y-%m}"
                )
            elif found["manifest"] != manifest:
                problems.append(
                    f"{manifest_path.name}: not the export the database recorded for {month:%Y-%m}"
                    f" (its events file had SHA-256 {bytes(found['sha256']).hex()})"
                )
    return problems


def archived_months(conn: Connection) -> list[date]:
    with translated(), conn.cursor(row_factory=dict_row) as cur:
        return [row["month"] for row in cur.execute(QUERIES["archived_months"]).fetchall()]


__all__ = [
    "ArchivedMonth",
    "archive_before",
    "archived_months",
    "parse_month",
    "recorded_problems",
    "verify_archive",
]
