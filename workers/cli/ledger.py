"""``reservations migrate`` and ``reservations ledger ...``: the ledger's operator commands."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workers.cli.options import F, database_url_option, env_option
from workers.config import Settings
from workers.errors import ReservationsError
from workers.ledger import archive, digests, migrations, partitions
from workers.ledger.connector import connect
from workers.ledger.models import Checkpoint, Problem, Role
from workers.ledger.verify import latest_checkpoint, seal_checkpoint, verify, verify_since

ROLES_HELP = """
\b
Roles (created by the first migration, NOLOGIN, shared by the whole cluster):
  reservations_owner   owns the ledger's schema; runs migrations and projection rebuilds
  reservations_writer  the workers: INSERT and SELECT on the ledger (no UPDATE, DELETE,
                       TRUNCATE, and no way to switch its guards off)
  reservations_reader  auditors and `ledger verify`: SELECT only
In production, log in as your own roles and make each a member of one of these, e.g.
  CREATE ROLE reservations_migrator LOGIN IN ROLE reservations_owner;
  CREATE ROLE reservations_app LOGIN IN ROLE reservations_writer;
  CREATE ROLE auditor LOGIN IN ROLE reservations_reader;
The commands SET ROLE to the role they need, so even a superuser URL cannot change the ledger.
"""

_database_url = database_url_option("PostgreSQL connection URL of the ledger.")


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _partition_options(command: F) -> F:
    """--ahead and --months: how far ahead ledger.events' partitions are made, and how wide."""
    command = env_option(
        "--partition-months",
        "months",
        envvar="LEDGER_PARTITION_MONTHS",
        type=click.IntRange(1, 12),
        default=partitions.DEFAULT_MONTHS,
        help="Months of ledger rows per partition of ledger.events.",
    )(command)
    return env_option(
        "--ahead",
        envvar="LEDGER_PARTITIONS_AHEAD",
        type=click.IntRange(0, 120),
        default=partitions.DEFAULT_AHEAD,
        help="Months after this one that must have their partition of ledger.events already.",
    )(command)


@click.command(epilog=ROLES_HELP)
@database_url_option(
    "Where to migrate, as a role that is a member of reservations_owner (or a superuser).", migrations=True
)
@click.option("--check", is_flag=True, help="Only list the pending migrations; exit 1 if there are any.")
@_partition_options
def migrate(database_url: str, check: bool, ahead: int, months: int) -> None:
    """Apply the ledger's SQL migrations (idempotent), creating the database if needed, then make
    ledger.events' partitions that are missing up to --ahead months ahead.

    Refuses (exit 2) to touch a database that has applied migrations this release does not know.
    """
    try:
        if check:
            todo = migrations.check(database_url)
            for migration in todo:
                click.echo(f"pending: {migration}")
            sys.exit(1 if todo else 0)
        applied = migrations.migrate(database_url)
        with connect(database_url, None) as conn:
            made = partitions.ensure_partitions(conn, ahead, months)
    except ReservationsError as exc:
        _fail(str(exc))
    for migration in applied:
        click.echo(f"applied: {migration}")
    if not applied:
        click.echo("the ledger is up to date")
    for name in made:
        click.echo(f"partition made: ledger.{name}")


@click.group(epilog=ROLES_HELP)
def ledger() -> None:
    """Verify, checkpoint, rebuild and query the ledger."""


@ledger.command("partitions")
@database_url_option(
    "The ledger, as a role that is a member of reservations_owner (or a superuser).", migrations=True
)
@_partition_options
def partitions_command(database_url: str, ahead: int, months: int) -> None:
    """Make ledger.events' missing partitions up to --ahead months ahead, and list them all.

    Run it from cron (monthly is enough with the default --ahead 3): a row that finds no partition
    lands in the DEFAULT partition and stays there (ops/LEDGER.md, "Partitions").
    """
    try:
        with connect(database_url, None) as conn:
            made = partitions.ensure_partitions(conn, ahead, months)
            listed = partitions.list_partitions(conn)
    except ReservationsError as exc:
        _fail(str(exc))
    for name in made:
        click.echo(f"partition made: ledger.{name}")
    for part in listed:
        span = f"{part.lower:%Y-%m-%d} to {part.upper:%Y-%m-%d}" if part.lower and part.upper else "DEFAULT"
        state = " (compacted)" if part.compacted else "" if part.has_rows else " (empty)"
        click.echo(f"ledger.{part.partition_name}: {span}{state}")


@ledger.command("compact")
@database_url_option(
    "The ledger, as a role that is a member of reservations_owner (it rebuilds indexes).", migrations=True
)
@click.option(
    "--before",
    metavar="YYYY-MM",
    callback=lambda _ctx, _param, value: None if value is None else _month(value),
    help="Compact the months before this one (default: this month, i.e. every month that is over).",
)
@click.option(
    "--wait-limit",
    type=click.FloatRange(min=1),
    metavar="SECONDS",
    help="Give up when a rebuild has waited this long for the transactions open in this database"
    " (or for a lock); the next run finishes the month. Default: wait as long as they last.",
)
def compact_command(database_url: str, before: date | None, wait_limit: float | None) -> None:
    """Rebuild the indexes of each month of ledger.events that is over, packed full, once.

    A month that is over takes no new row, but its indexes keep the half-empty pages that inserts
    left (a fifth to a third of their bytes). Each index of the month is rebuilt CONCURRENTLY
    (writers, readers and history go on; each rebuild waits for the transactions open in this
    database) and the month is marked compacted: run it monthly from cron, after `ledger
    partitions`, off-peak and not while `ledger archive` runs (in cron, bound the waits with
    --wait-limit). Rows and hashes are not touched. A run cut short is finished by the next one;
    two runs at once are refused.
    """
    current = datetime.now(UTC).date().replace(day=1)
    month = before or current
    if month > current:
        _fail(f"{month:%Y-%m} is not over yet: only months before {current:%Y-%m} can be compacted")
    done = 0
    try:
        with connect(database_url, Role.OWNER) as conn:
            for compaction in partitions.compact_closed(
                conn,
                archive.bounds(month)["start"],
                lambda name: click.echo(f"compacting ledger.{name} (REINDEX CONCURRENTLY) ..."),
                wait_limit,
            ):
                done += 1
                was, now = compaction.index_bytes_before, compaction.index_bytes_after
                click.echo(
                    f"compacted ledger.{compaction.partition_name}: indexes {was / 1e6:,.1f} MB to"
                    f" {now / 1e6:,.1f} MB ({1 - now / was if was else 0:.0%} smaller)"
                )
    except ReservationsError as exc:
        _fail(str(exc))
    if not done:
        click.echo(
            f"nothing to compact: every month before {month:%Y-%m} that holds rows is compacted already"
        )


@ledger.command("verify")
@_database_url
@click.option("--checkpoint", is_flag=True, help="When the ledger verifies, seal a new checkpoint.")
@click.option(
    "--expect-checkpoint",
    "expected",
    multiple=True,
    metavar="ID:DIGEST",
    callback=lambda _ctx, _param, values: [_expected_checkpoint(v) for v in values],
    help="A checkpoint digest noted earlier outside the database; it must still match. Repeatable.",
)
@click.option(
    "--digests",
    "digests_file",
    type=click.Path(dir_okay=False, path_type=Path, exists=True),
    help="A digest file written by `ledger checkpoint --digests`: every checkpoint in it must still"
    " have its digest, and every signature must hold.",
)
@click.option(
    "--public-key",
    metavar="KEY",
    help="The Ed25519 public key of the digests' signatures (PEM, a PEM file, or base64 raw);"
    " default: derived from LEDGER_SIGNING_KEY when that is set.",
)
@click.option(
    "--since-checkpoint",
    "since",
    type=click.IntRange(min=1),
    metavar="N",
    help="Check only what was written after checkpoint N (sealed since migration 0005), each chain"
    " from its sealed head: time proportional to the new rows. The checkpoints after N must hold;"
    " N and the rows it sealed were checked by an earlier verify.",
)
@click.option(
    "--archive",
    "archive_path",
    type=click.Path(exists=True, path_type=Path),
    help="Verify an archive offline instead (no database): a manifest written by `ledger archive`,"
    " or a folder of them (chains followed from month to month): file digests, every row's hash,"
    " the chains' links and the heads sealed by the archive's checkpoint.",
)
@click.option(
    "--against-database",
    is_flag=True,
    help="With --archive: also check that each manifest is the one the database recorded when it"
    " archived that month (ledger.archives): an export rewritten together with its manifest passes"
    " the offline check, not this one.",
)
def verify_command(
    database_url: str,
    against_database: bool,
    checkpoint: bool,
    since: int | None,
    archive_path: Path | None,
    expected: list[tuple[int, bytes]],
    digests_file: Path | None,
    public_key: str | None,
) -> None:
    """Check every hash chain and checkpoint; print each problem with its ledger position.

    Exit status 0 when the ledger is intact, 1 when anything was altered, removed or inserted
    (or does not match the digests noted outside), 2 when it could not be checked. Note the
    printed checkpoint digest somewhere outside the database (`ledger checkpoint --digests`):
    it is what proves that whole chains were not rewritten since.
    """
    if archive_path is not None:
        _verify_archive(archive_path, database_url if against_database else None)
        return
    outside: list[str] = []
    if digests_file is not None:
        outside, noted = _read_digests(digests_file, public_key)
        expected = [*expected, *noted]
    try:
        checked = None
        with connect(database_url, Role.READER) as conn:
            if since is None:
                problems = verify(conn, expected)
            else:
                problems, checked = verify_since(conn, since, expected)
            for message in outside:
                click.echo(f"digest: {message}")
            for problem in problems:
                click.echo(str(problem))
            if problems or outside:
                if digests_file is not None and (outside or _outside_mismatch(problems)):
                    click.echo(
                        f"the ledger does not match the digests noted in {digests_file}: chains or"
                        " checkpoints were rewritten or removed since (or the file was changed)",
                        err=True,
                    )
                click.echo(f"ledger verification FAILED: {len(problems) + len(outside)} problem(s)", err=True)
                sys.exit(1)
        if checkpoint:
            with connect(database_url, Role.WRITER) as conn:
                seal_checkpoint(conn)
        with connect(database_url, Role.READER) as conn:
            latest = latest_checkpoint(conn)
    except ReservationsError as exc:
        _fail(str(exc))
    if checked is None:
        click.echo("ledger verified: every chain is intact")
    else:
        click.echo(
            f"ledger verified since checkpoint {since}: {checked} row(s) written after it checked,"
            " every chain intact from its sealed head"
        )
    if digests_file is not None:
        click.echo(f"every digest noted in {digests_file} matches ({len(expected)} checkpoint(s))")
    if latest is not None:
        click.echo(
            f"latest checkpoint {latest.checkpoint_id}: {latest.chains} chain head(s) sealed,"
            f" up to position {latest.max_position}, digest {latest.digest.hex()}"
        )


def _verify_archive(path: Path, database_url: str | None) -> None:
    try:
        problems, months = archive.verify_archive(path)
        if database_url is not None:
            with connect(database_url, Role.READER) as conn:
                problems.extend(archive.recorded_problems(conn, path))
    except ReservationsError as exc:
        _fail(str(exc))
    for problem in problems:
        click.echo(problem)
    if problems:
        click.echo(f"archive verification FAILED: {len(problems)} problem(s)", err=True)
        sys.exit(1)
    recorded = ", each manifest the one the database recorded" if database_url is not None else ""
    click.echo(f"archive verified: {months} month(s), every row's hash and every chain's link hold{recorded}")


@ledger.command("archive")
@database_url_option(
    "The ledger, as a role that is a member of reservations_owner (it detaches partitions).", migrations=True
)
@click.option(
    "--before",
    required=True,
    metavar="YYYY-MM",
    callback=lambda _ctx, _param, value: _month(value),
    help="Archive every month before this one (only months that are over).",
)
@click.option(
    "--to",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder the exports and manifests are written to.",
)
def archive_command(database_url: str, before: date, folder: Path) -> None:
    """Seal a checkpoint, export each month before --before (gzip JSON lines and a manifest),
    check each export against the database, then record the month and detach its partition.

    Idempotent: months already archived are left alone. Partitions are detached, never dropped:
    dropping one is the operator's decision (ops/LEDGER.md, "Archive and retention").
    """
    try:
        done = archive.archive_before(database_url, before, folder)
    except ReservationsError as exc:
        _fail(str(exc))
    for month in done:
        where = (
            "partition detached"
            if month.detached
            else "rows kept (the month is in the DEFAULT partition, or the ledger is not partitioned)"
        )
        click.echo(
            f"archived {month.month:%Y-%m}: {month.row_count} row(s) in {folder / month.file_name}"
            f" (sha256 {month.sha256}), sealed by checkpoint {month.checkpoint_id}; {where}"
        )
    if not done:
        click.echo(f"nothing to archive before {before:%Y-%m}: every such month is archived already")


def _month(value: str) -> date:
    try:
        return archive.parse_month(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@ledger.command("checkpoint")
@_database_url
@click.option(
    "--digests",
    "digests_file",
    metavar="FILE",
    help="Append the checkpoint's digest record (one JSON line, signed when LEDGER_SIGNING_KEY is"
    " set) to FILE; '-' prints it. Without it, a signed record is printed when a key is set.",
)
def checkpoint_command(database_url: str, digests_file: str | None) -> None:
    """Seal the chain heads that moved since the last checkpoint, and print the digest.

    Keep the digests outside the database (ops/LEDGER.md, "Digests kept outside"): `ledger
    verify --digests FILE` then catches a rewrite of whole chains, heads and checkpoints.
    """
    try:
        settings = Settings.from_env()
        key = digests.load_private_key(settings.ledger_signing_key) if settings.ledger_signing_key else None
        with connect(database_url, Role.WRITER) as conn:
            sealed = seal_checkpoint(conn)
    except (ReservationsError, ValueError) as exc:
        _fail(str(exc))
    click.echo(
        f"checkpoint {sealed.checkpoint_id}: {sealed.chains} chain head(s) sealed,"
        f" up to position {sealed.max_position}, digest {sealed.digest.hex()}"
    )
    _note(sealed, key, digests_file)


def _note(sealed: Checkpoint, key: Ed25519PrivateKey | None, digests_file: str | None) -> None:
    if digests_file is None and key is None:
        return
    line = digests.record_for(sealed, key).to_json()
    if digests_file is None or digests_file == "-":
        click.echo(line)
        return
    with Path(digests_file).open("a", encoding="utf-8") as out:
        out.write(line + "\n")
    click.echo(f"digest record appended to {digests_file}" + (" (signed)" if key else " (unsigned)"))


def _read_digests(path: Path, public_key: str | None) -> tuple[list[str], list[tuple[int, bytes]]]:
    """Signature problems and the (checkpoint_id, digest) pairs noted in ``path``; exit 2 when the
    file cannot be read or a signature cannot be checked."""
    try:
        records = digests.parse(path.read_text(encoding="utf-8").splitlines())
        public = None
        if public_key:
            public = digests.load_public_key(public_key)
        else:
            configured = Settings.from_env().ledger_signing_key
            if configured:
                public = digests.load_private_key(configured).public_key()
    except (ReservationsError, ValueError, OSError) as exc:
        _fail(f"cannot read the digests: {exc}")
    if not records:
        _fail(f"{path} holds no digest")
    if public is None and any(r.signature for r in records):
        _fail("the digests are signed: give --public-key (or set LEDGER_SIGNING_KEY) to check them")
    return digests.signature_problems(records, public), [
        (r.checkpoint_id, bytes.fromhex(r.digest)) for r in records
    ]


def _outside_mismatch(problems: list[Problem]) -> bool:
    """Whether a checkpoint noted outside is missing or has another digest now."""
    return any(p.kind == "checkpoint" and ", expected " in p.message for p in problems)


def _expected_checkpoint(value: str) -> tuple[int, bytes]:
    checkpoint_id, _, digest = value.partition(":")
    try:
        return int(checkpoint_id), bytes.fromhex(digest)
    except ValueError:
        raise click.BadParameter(f"expected ID:DIGEST (hex), not {value!r}") from None
