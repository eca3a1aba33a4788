"""The console in a real browser: Debian's chromium, headless, driven by Playwright (never a
downloaded browser), against the real `reservations audit-api` command over a ledger written by
a real worker applying actions to the emulator.

An auditor signs in, searches the reservation, opens its story and sees its transitions in order
with where the ledger learnt each (our action, a fetch); no request leaves the API's host and no
Content-Security-Policy violation is reported. The screenshot is the one README.md shows
(``CONSOLE_SCREENSHOT=ops/console-story.png`` refreshes it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.commands import ServedCommand, served_command
from tests.support.e2e import action_for, wait_for_outcome
from tests.support.services import unavailable
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess

CHROMIUM = Path("/usr/bin/chromium")
# The flags the project allows: headless, and nothing that phones home.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ALICE_TOKEN = "alice-browser-token-0123456789"


def _need_chromium() -> Any:
    """Playwright's sync API, or skip (locally) / fail (CI) when it or chromium is missing."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install chromium); CI installs it in .ci/run")
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    return sync_api


@pytest.fixture(scope="module")
def story(celery_app: Any, worker: WorkerProcess, emulator: Any, ledger: LedgerReader) -> dict[str, Any]:
    """A demo-like run: accept; an agent wraps up in Flex behind our back; complete (a fetch that
    notices the wrap-up, then the update)."""
    from workers.testing.emulator.admin import EmulatorAdmin as Admin

    with Admin(emulator.base_url) as admin:
        reservation = admin.create_reservation(status="pending")
        accept = action_for(reservation, ActionKind.ACCEPT, correlation_id="browser-demo")
        celery_app.enqueue(accept)
        assert wait_for_outcome(ledger, accept.action_id).outcome == "applied"
        admin.change(reservation.sid, "wrapup")
        complete = action_for(reservation, ActionKind.COMPLETE, correlation_id="browser-demo")
        celery_app.enqueue(complete)
        assert wait_for_outcome(ledger, complete.action_id).outcome == "applied"
    return {"sid": reservation.sid, "accept": str(accept.action_id), "complete": str(complete.action_id)}


@pytest.fixture(scope="module")
def served(db_url: str, story: dict[str, Any]) -> Iterator[ServedCommand]:
    """The real command on a free port, with a named auditor and JSON logs."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "AUDIT_API_TOKENS": f"alice:{ALICE_TOKEN}",
        "AUDIT_API_TOKEN": "",
        "AUDIT_VERIFY_INTERVAL": "0",
        "LOG_FORMAT": "json",
    }
    with served_command("audit-api", env, "/readyz", timeout=30) as served:
        yield served


def test_an_auditor_follows_a_reservations_story_in_a_browser(
    served: ServedCommand, story: dict[str, Any], tmp_path: Path, admin: EmulatorAdmin
) -> None:
    sync_api = _need_chromium()
    base = served.base
    host = urlsplit(base).netloc
    requested: list[str] = []
    violations: list[str] = []

    def stay_here(route: Any) -> None:
        if urlsplit(route.request.url).netloc == host:
            route.continue_()
        else:
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # Anything for another host is recorded and refused: the console must work offline.
            context.route("**/*", stay_here)
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("console", lambda message: violations.append(message.text)
                    if "Content Security Policy" in message.text else None)  # fmt: skip

            page.goto(f"{base}/ui/")
            assert page.locator("#login").is_visible(), "no token yet: the login form"
            assert story["sid"] not in page.content()
            page.fill("#token", ALICE_TOKEN)
            page.click("#login button")
            page.wait_for_selector("#auditor")
            assert page.inner_text("#auditor") == "alice"

            page.click("text=Search")
            page.fill("#reservation_sid", story["sid"])
            page.click("#search button")
            page.wait_for_selector("#results")
            page.click("#results a.reservation >> nth=0")
            page.wait_for_selector("#steps")
            assert page.inner_text("#sid") == story["sid"]

            rows = page.locator("#steps tbody tr")
            shown = [
                (
                    rows.nth(i).locator("td.to-status").inner_text(),
                    rows.nth(i).locator("td.source").inner_text(),
                )
                for i in range(rows.count())
            ]
            # The first fetch found it pending; our accept; the agent's wrap-up, noticed on the
            # fetch after the 412; our complete.
            assert shown == [
                ("pending", "fetch"),
                ("accepted", "action"),
                ("wrapping", "fetch"),
                ("completed", "action"),
            ]
            actions = page.inner_text("#steps")
            assert story["accept"] in actions
            assert story["complete"] in actions
            # The picture agrees: one point per step, in order, coloured by its source.
            sources = page.eval_on_selector_all(
                "svg g.step", "nodes => nodes.map(n => n.getAttribute('class'))"
            )
            assert sources == [f"step source-{source}" for _, source in shown]
            assert "intact" in page.inner_text("#chain")
            shot = tmp_path / "console-story.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # Swagger UI comes from this server too, and renders.
            page.goto(f"{base}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        finally:
            browser.close()
    assert requested, "the browser made requests"
    assert all(urlsplit(url).netloc == host for url in requested), [u for u in requested if host not in u]
    assert violations == []
    wanted = os.environ.get("CONSOLE_SCREENSHOT")
    if wanted:
        shutil.copyfile(shot, wanted)
    # Every request was logged as one JSON line with the auditor's name, and never the token.
    lines = [json.loads(line) for line in served.stop().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "workers.audit.access"]
    assert {line.get("auditor") for line in access if "/ui/reservations/" in line["message"]} == {"alice"}
    assert not any(ALICE_TOKEN in json.dumps(line) for line in lines)
