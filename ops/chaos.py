"""The project's chaos run (issue 12): real workers, faults, SIGKILLs and cut database connections.

Starts a migrated scratch database, a private RabbitMQ vhost, the TaskRouter emulator with a
seeded fault mix (412 races, status races, 429, 5xx, drops before and after apply) and N real
Celery worker processes (threads pool); publishes one action per reservation as plain JSON through
the intake, on a mix that includes non-status-changing instructions (call and redirect without
accept, supervise, status-less updates); SIGKILLs a random worker every --kill-every seconds
(starting another) and terminates the workers' PostgreSQL connections every --cut-every seconds.
Then it waits (bounded) for every action's outcome and checks the ledger against the emulator's
update log: no action lost, none applied twice, every landed update recorded as applied or
indeterminate, no indeterminate without a lost answer behind it, no applied without a landed
update. Prints a table; exits 1 when an invariant fails. Everything it starts is removed.

Run from the repository root: ``.venv/bin/python ops/chaos.py --actions 1000`` (defaults: the
issue's "Done when" mix).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from workers.testing.chaos import ChaosConfig, FaultMix, Findings, run
from workers.testing.chaos import Progress as RunProgress


def parse(argv: Sequence[str] | None) -> ChaosConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--actions", type=int, default=1000, help="actions, one per reservation (default 1000)")
    add("--workers", type=int, default=3, help="worker processes kept running (default 3)")
    add("--concurrency", type=int, default=8, help="threads per worker process (default 8)")
    add(
        "--kill-every",
        type=float,
        default=3.0,
        help="seconds between SIGKILLs of a random worker; 0: none (3)",
    )
    add(
        "--cut-every",
        type=float,
        default=4.0,
        help="seconds between cuts of the workers' DB connections; 0: none (4)",
    )
    add("--conflict", type=float, default=0.20, help="share of updates meeting a 412 race (0.20)")
    add("--status-race", type=float, default=0.05, help="share of updates meeting a status race (0.05)")
    add("--throttle", type=float, default=0.05, help="share of requests answered 429 (0.05)")
    add("--server-error", type=float, default=0.05, help="share of requests answered 500 or 503 (0.05)")
    add("--drop-before", type=float, default=0.02, help="share of requests dropped before apply (0.02)")
    add("--drop-after", type=float, default=0.03, help="share of updates dropped after apply (0.03)")
    add("--seed", type=int, default=12, help="seed of the mix, the faults and the victims (12)")
    add(
        "--no-status-share",
        type=float,
        default=None,
        help="share of actions that change no status (call or redirect without accept, supervise,"
        " a status-less update); default: every recipe equally often, 4 of 12",
    )
    add(
        "--publish-seconds",
        type=float,
        default=45.0,
        help="spread the publishes over this many seconds, so kills and cuts meet actions in flight (45)",
    )
    add(
        "--chaos-seconds", type=float, default=180.0, help="kills and cuts stop after this many seconds (180)"
    )
    add("--settle-seconds", type=float, default=60.0, help="then wait this long for the rest to settle (60)")
    add(
        "--lost-answer-window",
        type=float,
        default=1.0,
        help="a landing this close to a kill or cut lost its answer (1)",
    )
    add(
        "--admin-url",
        default=os.environ.get("CHAOS_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL maintenance database, to create and drop the scratch one (env CHAOS_ADMIN_URL)",
    )
    args = parser.parse_args(argv)
    faults = FaultMix(
        conflict=args.conflict,
        throttle=args.throttle,
        server_error=args.server_error,
        drop_before=args.drop_before,
        drop_after=args.drop_after,
        status_race=args.status_race,
    )
    return ChaosConfig(
        actions=args.actions,
        workers=args.workers,
        concurrency=args.concurrency,
        kill_every=args.kill_every,
        cut_every=args.cut_every,
        faults=faults,
        seed=args.seed,
        publish_seconds=args.publish_seconds,
        no_status_share=args.no_status_share,
        chaos_seconds=args.chaos_seconds,
        settle_seconds=args.settle_seconds,
        lost_answer_window=args.lost_answer_window,
        admin_url=args.admin_url,
    )


def table(findings: Findings) -> Table:
    shown = Table(title="chaos run")
    shown.add_column("figure")
    shown.add_column("value", justify="right")
    shown.add_column("check")
    for name, value, passed in findings.rows():
        shown.add_row(name, value, "" if passed is None else ("ok" if passed else "[bold red]FAIL[/]"))
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    config = parse(argv)
    console = Console()
    console.print(
        f"{config.actions} actions, {config.workers} workers x {config.concurrency} threads, SIGKILL every "
        f"{config.kill_every:g} s, connections cut every {config.cut_every:g} s; {config.faults.describe()}"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=config.actions)

        def show(progress: RunProgress) -> None:
            description = f"{progress.phase:<9} kills {progress.kills:>3}  cuts {progress.cuts:>3}"
            bar.update(task, completed=progress.settled, description=description)

        findings = run(config, show)
    console.print(table(findings))
    failures = findings.failures()
    if failures:
        console.print(f"[bold red]FAILED[/]: {', '.join(failures)}")
        return 1
    console.print("[bold green]all invariants hold[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
