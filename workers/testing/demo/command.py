"""``reservations demo``: the whole system end to end on this machine's PostgreSQL and RabbitMQ.

It migrates a ledger database of its own, starts the TaskRouter emulator and a real Celery
worker as subprocesses, seeds reservations, publishes a realistic mix of actions as plain JSON
(with races by other agents, injected 503s and 429s, a duplicate delivery and invalid messages),
shows progress while they settle, and prints what happened: outcomes, conflicts, retries, HTTP
calls, throughput, the dead-letter queue and the audit history of one raced reservation. It exits
1 if anything was lost (an action without exactly one outcome, the ledger disagreeing with the
emulator's transition log, a refused message missing from the dead-letter queue) and 2 when
PostgreSQL or RabbitMQ cannot be reached, saying what to start.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from workers.cli.options import broker_url_option, database_url_option, env_option

DEFAULT_RESERVATIONS = 40
SHORT_RESERVATIONS = 8


@click.command()
@env_option(
    "--reservations",
    type=click.IntRange(1, 2000),
    envvar="DEMO_RESERVATIONS",
    default=None,
    help=f"How many reservations to seed and act on  [default: {DEFAULT_RESERVATIONS};"
    f" {SHORT_RESERVATIONS} with --short]",
)
@env_option(
    "--short",
    is_flag=True,
    envvar="DEMO_SHORT",
    help="A small, fast run (the test suite's): fewer reservations, a shorter settle time-out.",
)
@env_option(
    "--seed",
    type=int,
    envvar="DEMO_SEED",
    default=7,
    help="Seeds the mix of scripts, their order and the injected faults: same seed, same run.",
)
@env_option(
    "--keep-database",
    is_flag=True,
    envvar="DEMO_KEEP_DATABASE",
    help="Keep the demo's ledger database afterwards (for `reservations history`); the next run"
    " starts it afresh.",
)
@env_option(
    "--database",
    "database",
    envvar="DEMO_DATABASE",
    default="reservations_demo",
    help="Name of the demo's own ledger database, created (afresh) on DATABASE_URL's server.",
)
@database_url_option("The PostgreSQL server (and role) to use; its database name is replaced by --database.")
@broker_url_option("RabbitMQ. A private vhost is made on it with rabbitmqctl when possible, and deleted.")
@env_option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DEMO_SUMMARY_JSON",
    default=None,
    help="Also write the summary (outcomes, checks, figures) to this file as JSON.",
)
def demo(
    reservations: int | None,
    short: bool,
    seed: int,
    keep_database: bool,
    database: str,
    database_url: str,
    broker_url: str,
    summary_json: Path | None,
) -> None:
    """Run the whole system end to end on the local PostgreSQL and RabbitMQ, and check nothing was lost."""
    from workers.testing.demo import scenario as scenarios
    from workers.testing.demo.runner import Options, ServiceUnavailable, run

    console = Console(highlight=False)
    count = reservations or (SHORT_RESERVATIONS if short else DEFAULT_RESERVATIONS)
    scenario = scenarios.build(count, seed)
    options = Options(
        reservations=count,
        seed=seed,
        database_url=database_url,
        broker_url=broker_url,
        database=database,
        keep_database=keep_database,
        settle_timeout=60.0 if short else 120.0,
    )
    console.print(
        f"[bold]reservations demo[/]: {count} reservations (+2 that must fail), {scenario.actions}"
        f" actions, seed {seed}"
    )
    progress = _progress(console)
    tasks: list[Any] = []

    def settled(done: int, total: int) -> None:
        if not tasks:  # the clock starts with the first publish, not with the services
            tasks.append(progress.add_task("actions settled", total=total))
        progress.update(tasks[0], completed=done, total=total)

    try:
        with progress:
            result = run(
                options, scenario, say=lambda line: progress.console.print(f"  {line}"), progress=settled
            )
    except ServiceUnavailable as exc:
        console.print(f"[bold red]cannot run the demo[/]:\n{exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted: the demo stopped what it started")
        raise SystemExit(130) from None
    _print(console, result)
    if summary_json is not None:
        summary_json.write_text(json.dumps(summary(result), indent=2) + "\n", encoding="utf-8")
    if result.lost:
        raise SystemExit(1)


def _progress(console: Console) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def summary(result: Any) -> dict[str, Any]:
    """The run as JSON: what the tables show."""
    return {
        "database": result.database,
        "broker": result.broker,
        "actions": len(result.sent),
        "messages_published": result.messages_published,
        "duplicates": result.duplicates,
        "outcomes": dict(result.outcomes),
        "unexpected": [
            {"script": s.script, "action": s.action, "expected": s.expected.value, "outcome": s.outcome}
            for s in result.unexpected
        ],
        "outcome_rows_per_action": dict(Counter(result.outcome_rows[s.action_id] for s in result.sent)),
        "conflicts": result.conflicts,
        "failed_attempts": dict(result.attempts_by_status),
        "http_calls": result.http_calls,
        "calls_per_action": round(result.calls_per_action, 2),
        "dead_letters": len(result.dead_letters),
        "elapsed_seconds": round(result.elapsed, 2),
        "throughput_per_second": round(result.throughput, 1),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
        "errors": result.errors,
        "lost": result.lost,
    }


def _history(result: Any) -> Table:
    """The raced reservation's ledger rows, narrow enough for a terminal (``reservations history
    --reservation WR...`` shows every field)."""
    sid = result.raced_history[0].reservation_sid
    table = Table(
        title=f"Audit history of a raced reservation ({result.raced_script}): {sid}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("position", "kind", "action", "status", "ETag", "http", "outcome"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail", overflow="fold", min_width=12)
    for event in result.raced_history:
        status = etag = ""
        if event.from_status or event.to_status:
            status = f"{event.from_status or '-'}→{event.to_status or '?'}"
        if event.etag_before or event.etag_after:
            etag = f"{event.etag_before or '-'}→{event.etag_after or '?'}"
        table.add_row(
            str(event.position),
            event.kind,
            event.action or "",
            status,
            etag,
            "" if event.http_status is None else str(event.http_status),
            event.outcome or "",
            event.detail or "",
        )
    return table


def _events(result: Any) -> Table:
    """The transitions the ledger learnt from TaskRouter's events (``reservations history`` shows
    them with source=event)."""
    table = Table(
        title="Transitions that were not ours, from TaskRouter's events (source=event)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("position", "reservation", "status", "source", "event"):
        table.add_column(column, no_wrap=True)
    for event in result.event_history:
        status = f"{event.from_status or '-'}→{event.to_status or '?'}"
        what = (event.detail or "").split(" ")[0]  # the event type; `reservations history` shows all
        sid = event.reservation_sid or ""
        table.add_row(str(event.position), f"{sid[:10]}…", status, event.source or "", what)
    return table


def _print(console: Console, result: Any) -> None:
    outcomes = Table(title="Outcomes", title_justify="left")
    outcomes.add_column("outcome")
    outcomes.add_column("actions", justify="right")
    outcomes.add_column("as scripted", justify="right")
    scripted = Counter(s.expected.value for s in result.sent)
    for name, number in sorted(result.outcomes.items(), key=lambda item: -item[1]):
        outcomes.add_row(name, str(number), str(scripted.get(name, 0)))
    outcomes.add_row("[bold]total[/]", str(len(result.sent)), str(len(result.sent)))
    console.print(outcomes)

    scripts = Table(title="By script (the outcomes of its first reservation, in order)", title_justify="left")
    scripts.add_column("script")
    scripts.add_column("reservations", justify="right")
    scripts.add_column("outcomes")
    by_script: dict[str, list[Any]] = {}
    for sent in result.sent:
        by_script.setdefault(sent.script, []).append(sent)
    for name, sent_list in sorted(by_script.items()):
        reservations = len({s.reservation_sid for s in sent_list}) or 1
        firsts = [s for s in sent_list if s.reservation_sid == sent_list[0].reservation_sid]
        shown = ", ".join(f"{s.action}: {s.outcome or 'none'}" for s in firsts)
        scripts.add_row(name, str(reservations), shown)
    console.print(scripts)

    figures = Table(title="Figures", title_justify="left", show_header=False)
    figures.add_column("what")
    figures.add_column("value", justify="right")
    figures.add_row(
        f"messages published ({result.duplicates} duplicate(s), {result.invalid} invalid)",
        str(result.messages_published),
    )
    figures.add_row("conflicts retried (412s in the ledger)", str(result.conflicts))
    failed = ", ".join(f"{n}x {status}" for status, n in sorted(result.attempts_by_status.items()))
    figures.add_row("failed update attempts, retried later", failed or "0")
    for operation, counts in sorted(result.http_calls.items()):
        detail = ", ".join(f"{n}x {status}" for status, n in sorted(counts.items()) if status != "total")
        figures.add_row(f"HTTP {operation} calls (emulator counters)", f"{counts['total']} ({detail})")
    figures.add_row("HTTP calls per action that reached TaskRouter", f"{result.calls_per_action:.2f}")
    figures.add_row("messages in reservations.dead", str(len(result.dead_letters)))
    figures.add_row("time from first publish to last outcome", f"{result.elapsed:.1f} s")
    figures.add_row(
        "throughput (paced by the scripts' steps and retry countdowns)", f"{result.throughput:.1f} actions/s"
    )
    console.print(figures)

    if result.raced_history:
        console.print(_history(result))
    if result.event_history:
        console.print(_events(result))

    for unexpected in result.unexpected:
        console.print(
            f"[yellow]note[/]: {unexpected.script}: {unexpected.action} ended {unexpected.outcome},"
            f" the script expected {unexpected.expected.value}"
        )
    for check in result.checks:
        mark = "[bold green]ok[/]    " if check.ok else "[bold red]FAILED[/]"
        console.print(f"{mark} {check.name}: {check.detail}")
    for error in result.errors:
        console.print(f"[bold red]FAILED[/] {error}")
    if result.lost:
        console.print("[bold red]Something was lost: see above.[/]")
    else:
        console.print(
            "[bold green]Nothing lost[/]: every action has exactly one outcome,"
            " and the ledger agrees with TaskRouter."
        )
