"""``reservations demo`` (interim): accept one reservation through the real twilio SDK, with If-Match.

It starts the emulator as a subprocess, seeds a reservation through the admin API, fetches it
with ``fetch_with_http_info()`` to learn its ETag, accepts it with
``update_with_http_info(if_match=...)``, shows that a second update with the now stale ETag is
refused with 412, and prints what the emulator saw. Exits non-zero on any failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click

from workers.config import EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header by name, whatever its casing (TaskRouter sends both ETag and Etag)."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def step(self, name: str, http: str, result: str) -> None:
        self.rows.append((name, http, result))

    def check(self, ok: bool, failure: str) -> None:
        if not ok:
            self.failures.append(failure)


@click.command()
@click.option(
    "--strict-headers/--no-strict-headers",
    envvar="EMULATOR_STRICT_HEADERS",
    show_envvar=True,
    default=False,
    show_default=True,
    help="Run the emulator with the ETag header spellings of Twilio's OpenAPI spec.",
)
def demo(strict_headers: bool) -> None:
    """Accept a reservation on a local TaskRouter emulator with the twilio SDK and If-Match."""
    from rich.console import Console

    console = Console()
    report = Report()
    try:
        _run(report, strict_headers)
    except Exception as error:  # the demo reports every failure instead of a traceback
        report.failures.append(f"{type(error).__name__}: {error}")
    _print(console, report)
    if report.failures:
        raise SystemExit(1)


def _run(report: Report, strict_headers: bool) -> None:
    from twilio.base.exceptions import TwilioRestException
    from twilio.rest import Client

    from workers.emulator.admin import EmulatorAdmin
    from workers.emulator.process import EmulatorProcess

    extra = [
        "--account-sid",
        EMULATOR_ACCOUNT_SID,
        "--auth-token",
        EMULATOR_AUTH_TOKEN,
        "--strict-headers" if strict_headers else "--no-strict-headers",
    ]
    with EmulatorProcess(extra_args=extra) as emulator, EmulatorAdmin(emulator.base_url) as admin:
        report.step("start emulator", "", f"{emulator.base_url} (pid {emulator.pid})")
        seeded = admin.create_reservation(worker_name="Doug")
        report.step(
            "seed reservation (admin API)", "201", f"{seeded.sid} {seeded.status}, version {seeded.version}"
        )

        client = Client(EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)
        # The SDK builds every TaskRouter URL from this domain's base_url.
        client.taskrouter.base_url = emulator.base_url
        try:
            reservation = (
                client.taskrouter.v1.workspaces(seeded.workspace_sid)
                .tasks(seeded.task_sid)
                .reservations(seeded.sid)
            )
            fetched = reservation.fetch_with_http_info()
            etag = header(fetched.headers, "ETag")
            status = fetched.data.reservation_status
            report.step("fetch_with_http_info()", str(fetched.status_code), f"{status}, ETag {etag}")
            report.check(status == "pending", f"fetched status is {status}, not pending")
            if etag is None:
                report.failures.append("the fetch carried no ETag header")
                return

            updated = reservation.update_with_http_info(if_match=etag, reservation_status="accepted")
            new_etag = header(updated.headers, "ETag")
            status = updated.data.reservation_status
            report.step(
                f"update_with_http_info(if_match={etag!r}, accepted)",
                str(updated.status_code),
                f"{status}, ETag {new_etag}",
            )
            report.check(status == "accepted", f"updated status is {status}, not accepted")
            report.check(new_etag != etag, "the ETag did not change with the update")

            try:
                reservation.update_with_http_info(if_match=etag, reservation_status="completed")
                report.failures.append("an update with a stale ETag was applied")
            except TwilioRestException as refused:
                report.step(
                    f"update with stale If-Match {etag!r}", str(refused.status), f"Twilio code {refused.code}"
                )
                report.check(refused.status == 412, f"a stale ETag got HTTP {refused.status}, not 412")
        finally:
            client.http_client.session.close()

        transitions = admin.transitions(seeded.sid)
        for entry in transitions:
            report.step(
                f"transition #{entry.sequence} ({entry.source})",
                "",
                f"{entry.from_status} -> {entry.to_status},"
                f" version {entry.version_before} -> {entry.version_after}",
            )
        report.check(len(transitions) == 1, f"{len(transitions)} transitions were logged, not 1")
        counts = admin.reservation_counts(seeded.sid)
        report.step(
            "requests the emulator saw",
            "",
            f"{counts.fetch.total} fetch, {counts.update.total} updates"
            f" ({_statuses(counts.update.by_status)})",
        )
        report.check(counts.update.status(200) == 1, "not exactly one update was applied")


def _statuses(by_status: Mapping[str, Any]) -> str:
    return ", ".join(f"{count}x {status}" for status, count in sorted(by_status.items()))


def _print(console: Any, report: Report) -> None:
    from rich.table import Table

    table = Table(title="TaskRouter reservation, accepted with If-Match")
    table.add_column("step")
    table.add_column("HTTP", justify="right")
    table.add_column("result")
    for row in report.rows:
        table.add_row(*row)
    console.print(table)
    if report.failures:
        for failure in report.failures:
            console.print(f"[bold red]FAILED[/]: {failure}")
    else:
        console.print("[bold green]OK[/]: accepted exactly once; the stale ETag was refused with 412.")
