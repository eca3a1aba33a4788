"""The audit console (/ui/) over a seeded ledger, through the API exactly as `reservations
audit-api` builds it: sign-in, what each page shows, exports, and what every answer carries (a
strict CSP, no external host, no credentials in a URL)."""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from tests.audit.conftest import TOKEN, Seeded
from tests.audit.support import TestClient, eventually
from workers.audit import auth
from workers.audit.api import AuditApiConfig, create_app
from workers.audit.guard import CONTENT_SECURITY_POLICY
from workers.ledger.connector import connect
from workers.ledger.events import Transition
from workers.ledger.models import Role
from workers.ledger.reader import LedgerReader
from workers.ledger.verify import seal_checkpoint
from workers.ledger.writer import PostgresLedgerWriter
from workers.logs import JsonFormatter

ALICE = auth.Auditor("alice", "alice-token-0123456789abcdef")


class Attributes(HTMLParser):
    """Every URL-bearing attribute of a page, and the rows of one table by id."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src", "action", "srcset", "xlink:href", "poster", "data") and value:
                self.urls.append(value)


def urls_of(page: str) -> list[str]:
    parser = Attributes()
    parser.feed(page)
    return parser.urls


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """The cells' text of each body row of ``<table id=table_id>``."""
    found = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.S)
    assert found, f"no table {table_id}"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", found.group(1), re.S)
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in rows]  # fmt: skip


@pytest.fixture(scope="module")
def browser(client: TestClient) -> TestClient:
    """A client of the same running API that carries no credential until it signs in."""
    return TestClient(client.app, follow_redirects=False)


@pytest.fixture
def signed_in(browser: TestClient) -> Iterator[TestClient]:
    browser.cookies.clear()
    answer = browser.post("/ui/login", data={"token": TOKEN, "next": "/ui/"})
    assert answer.status_code == 303, answer.text
    yield browser
    browser.cookies.clear()


@pytest.fixture(scope="module")
def observed(writer: PostgresLedgerWriter, reader: LedgerReader, seeded: Seeded) -> str:
    """Reservation 1 moved on behind our back: accepted -> wrapping, noticed on a fetch."""
    sid = seeded.reservation_sids[1]
    writer.append(
        Transition(sid, from_status="accepted", to_status="wrapping", etag_before="2", etag_after="3")
    )
    eventually(lambda: reader.history(reservation_sid=sid), lambda rows: len(rows) == 5)
    return sid


def pages(seeded: Seeded) -> list[str]:
    sid = seeded.reservation_sids[0]
    return [
        "/ui/",
        f"/ui/search?reservation_sid={sid}",
        f"/ui/reservations/{sid}",
        f"/ui/actions/{seeded.applied[0]}",
        f"/ui/actions/{seeded.failed}",
        f"/ui/reservations/{sid}?export=json",
        f"/ui/search?reservation_sid={sid}&export=csv",
        "/ui/?export=json",
    ]


def secrets_of(seeded: Seeded, path: str) -> list[str]:
    """What must not show before sign-in: any seeded id or SID the request did not name itself."""
    every = [*seeded.reservation_sids, *seeded.task_sids, *seeded.worker_sids, seeded.workspace_sid,
             *(str(a) for a in seeded.applied), str(seeded.failed), seeded.correlation_id]  # fmt: skip
    return [value for value in every if value not in path]


def test_without_a_valid_credential_every_page_is_the_login_form_never_data(
    browser: TestClient, seeded: Seeded
) -> None:
    stranger = auth.Auditor("mallory", "not-a-configured-token-0123")
    known = auth.Auditor(auth.UNNAMED, TOKEN)
    credentials: dict[str, tuple[dict[str, str], str | None]] = {
        "none": ({}, None),
        "wrong bearer": ({"Authorization": "Bearer wrong-token-0123456789"}, None),
        "empty bearer": ({"Authorization": "Bearer "}, None),
        "cookie of an unknown auditor": ({}, auth.session_cookie(stranger, time.time())),
        "expired cookie": ({}, auth.session_cookie(known, time.time() - auth.SESSION_SECONDS - 5)),
        "forged cookie": ({}, auth.session_cookie(known, time.time())[:-4] + "AAAA"),
        "the token as the cookie": ({}, TOKEN),
    }
    for what, (headers, cookie) in credentials.items():
        browser.cookies.clear()
        if cookie is not None:
            browser.cookies.set(auth.SESSION_COOKIE, cookie)
        for path in pages(seeded):
            answer = browser.get(path, headers=headers)
            assert answer.status_code == 401, (what, path, answer.status_code)
            assert 'id="login"' in answer.text, (what, path)
            assert not any(secret in answer.text for secret in secrets_of(seeded, path)), (what, path)
    browser.cookies.clear()
    # The JSON API says so in JSON, and keeps its bearer scheme.
    assert browser.get("/v1/events").status_code == 401


def test_signing_in_sets_a_strict_httponly_cookie_that_holds_no_token(
    browser: TestClient, seeded: Seeded
) -> None:
    browser.cookies.clear()
    wrong = browser.post("/ui/login", data={"token": "wrong-token-0123456789", "next": "/ui/"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    answer = browser.post(
        "/ui/login", data={"token": TOKEN, "next": f"/ui/reservations/{seeded.reservation_sids[0]}"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/ui/reservations/{seeded.reservation_sids[0]}"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    shown = browser.get(f"/ui/reservations/{seeded.reservation_sids[0]}")
    assert shown.status_code == 200
    assert seeded.reservation_sids[0] in shown.text
    assert auth.UNNAMED in shown.text  # who is signed in
    # The same session reads the JSON API too.
    assert browser.get(f"/v1/reservations/{seeded.reservation_sids[0]}").status_code == 200
    out = browser.post("/ui/logout")
    assert out.status_code == 303
    browser.cookies.clear()
    assert browser.get("/ui/").status_code == 401


def test_sign_in_goes_only_to_console_pages_and_only_from_this_origin(browser: TestClient) -> None:
    browser.cookies.clear()
    for elsewhere in ("//evil.example/ui/", "https://evil.example/", "/v1/../../x", "/\\evil.example"):
        answer = browser.post("/ui/login", data={"token": TOKEN, "next": elsewhere})
        assert answer.headers["location"] == "/ui/", elsewhere
    browser.cookies.clear()
    forged = browser.post("/ui/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers


def test_the_bearer_header_opens_the_api_and_the_pages(client: TestClient, seeded: Seeded) -> None:
    assert client.get("/v1/events", params={"reservation_sid": seeded.reservation_sids[0]}).status_code == 200
    assert client.get(f"/ui/actions/{seeded.applied[0]}").status_code == 200


def test_a_token_in_a_url_is_refused_and_not_logged(
    browser: TestClient, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workers.audit.access")
    refused = [
        f"/ui/?token={TOKEN}",
        f"/v1/events?access_token={TOKEN}",
        "/v1/events?api_key=anything",
        f"/ui/search?correlation_id={TOKEN}",
        f"/ui/reservations/{TOKEN}",
        f"/docs?auth={TOKEN}",
        f"/ui/login?Token={TOKEN}",
    ]
    for path in refused:
        answer = browser.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 400, path
        assert answer.json()["error"] == "credentials_in_url"
        assert TOKEN not in answer.text
    assert caplog.records, "each request is logged"
    assert not any(TOKEN in record.getMessage() for record in caplog.records)


def test_every_answer_sets_a_strict_content_security_policy(
    signed_in: TestClient, browser: TestClient, seeded: Seeded
) -> None:
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    paths = [*pages(seeded), "/ui/login", "/docs", "/openapi.json", "/healthz", "/ui/static/console.css",
             "/ui/reservations/WRnot-a-sid", f"/v1/actions/{uuid.uuid4()}"]  # fmt: skip
    for path in paths:
        answer = signed_in.get(path)
        assert answer.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, path
        assert answer.headers.get("x-content-type-options") == "nosniff", path
        assert answer.headers.get("x-frame-options") == "DENY", path
    signed_in.cookies.clear()
    assert browser.get("/ui/").headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # No inline script or style could run anyway; the pages have none to need it.
    for path in pages(seeded)[:5]:
        browser.cookies.clear()
        page = browser.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son\w+=", page), path


def test_no_page_references_an_external_host(signed_in: TestClient, seeded: Seeded, observed: str) -> None:
    """Crawl the console from the overview: every link, script, style sheet and form stays here."""
    start = [*pages(seeded)[:5], f"/ui/reservations/{observed}", "/docs", "/ui/login"]
    seen: set[str] = set()
    queue = list(start)
    while queue and len(seen) < 60:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        answer = signed_in.get(path)
        assert answer.status_code in (200, 303, 308), (path, answer.status_code)
        if "text/html" not in answer.headers.get("content-type", ""):
            continue
        assert "://" not in answer.text, (path, re.findall(r".{30}://.{30}", answer.text))
        for url in urls_of(answer.text):
            assert url.startswith(("/", "?", "#")), (path, url)
            assert not url.startswith("//"), (path, url)
            if url.startswith("/ui/") and "export=" not in url and not url.startswith("/ui/logout"):
                queue.append(url)
            elif url.startswith("?"):
                queue.append(path.split("?")[0] + url)
    assert any(p.startswith("/ui/actions/") for p in seen)
    assert any(p.startswith("/ui/search") for p in seen)
    # The style sheet and the script that starts Swagger UI name no host either.
    for asset in ("/ui/static/console.css", "/ui/static/swagger-init.js"):
        assert "://" not in signed_in.get(asset).text, asset
    assert signed_in.get("/ui/swagger/swagger-ui-bundle.js").status_code == 200


def test_the_story_shows_each_transition_in_order_with_its_source(
    signed_in: TestClient, observed: str
) -> None:
    page = signed_in.get(f"/ui/reservations/{observed}").text
    steps = [(row[3], row[4]) for row in table_rows(page, "steps")]
    assert steps == [("accepted", "action"), ("wrapping", "fetch")]
    # The picture: one point per step, in the same order, coloured by source.
    assert re.findall(r'<g class="step source-(\w+)">', page) == ["action", "fetch"]
    assert [row[2] for row in table_rows(page, "actions")] != []
    exported = signed_in.get(f"/ui/reservations/{observed}?export=csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [(r["to_status"], r["source"]) for r in rows] == steps
    assert exported.headers["content-disposition"].startswith("attachment")


def test_the_chain_state_follows_checkpoints(
    signed_in: TestClient, seeded: Seeded, writer: PostgresLedgerWriter, reader: LedgerReader, db_url: str
) -> None:
    sid = seeded.reservation_sids[2]

    def chain() -> str:
        found = re.search(
            r'<p id="chain"[^>]*>Hash chain: <strong>(.*?)</strong>',
            signed_in.get(f"/ui/reservations/{sid}").text,
        )
        assert found
        return found.group(1)

    assert chain() == "intact, not yet sealed by a checkpoint"
    with connect(db_url, Role.WRITER) as conn:
        sealed = seal_checkpoint(conn)
    assert chain() == f"verified up to checkpoint {sealed.checkpoint_id}"
    writer.append(
        Transition(sid, from_status="pending", to_status="timeout", etag_before="1", etag_after="2")
    )
    eventually(lambda: reader.history(reservation_sid=sid), lambda rows: len(rows) == 4)
    assert (
        chain()
        == f"verified up to checkpoint {sealed.checkpoint_id}, 1 row(s) since, linked but not yet sealed"
    )


def test_search_pages_like_the_api_and_exports_what_is_shown(signed_in: TestClient, seeded: Seeded) -> None:
    query = f"/ui/search?correlation_id={seeded.correlation_id}"
    shown = table_rows(signed_in.get(query).text, "results")
    api = signed_in.get("/v1/events", params={"correlation_id": seeded.correlation_id}).json()["items"]
    assert [int(r[0]) for r in shown] == [row["position"] for row in api]
    exported = json.loads(signed_in.get(query + "&export=json").text)
    assert [r["position"] for r in exported["items"]] == [row["position"] for row in api]
    as_csv = list(csv.DictReader(io.StringIO(signed_in.get(query + "&export=csv").text)))
    assert [int(r["position"]) for r in as_csv] == [row["position"] for row in api]
    # Bad filters are named on the page; nothing is searched.
    bad = signed_in.get("/ui/search?reservation_sid=WR123&since=yesterday&outcome=won").text
    assert "must be WR and 32 hex digits" in bad
    assert "must be one of" in bad
    assert 'id="results"' not in bad


def test_search_follows_the_cursor_to_the_next_page(signed_in: TestClient, seeded: Seeded) -> None:
    every = signed_in.get("/v1/events", params={"workspace_sid": seeded.workspace_sid, "limit": 1000}).json()
    first = signed_in.get(f"/ui/search?correlation_id={seeded.correlation_id}").text
    assert 'id="next-page"' not in first  # 12 rows: one page of 50
    assert len(table_rows(first, "results")) == sum(
        row["correlation_id"] == seeded.correlation_id for row in every["items"]
    )
    cursor = every["items"][2]["cursor"]
    after = table_rows(
        signed_in.get(f"/ui/search?correlation_id={seeded.correlation_id}&after={cursor}").text, "results"
    )
    assert int(after[0][0]) == next(
        row["position"] for row in every["items"][3:] if row["correlation_id"] == seeded.correlation_id
    )


def test_the_action_page_tells_the_outcome_its_reason_and_how_to_redrive(
    signed_in: TestClient, seeded: Seeded, reader: LedgerReader
) -> None:
    assert seeded.failed is not None
    page = signed_in.get(f"/ui/actions/{seeded.failed}").text
    outcome = re.sub(r"<[^>]+>|\s+", " ", re.search(r'<p id="outcome">(.*?)</p>', page, re.S).group(1))  # type: ignore[union-attr]
    assert "failed" in outcome
    assert "HTTP 404" in outcome
    assert "Twilio error 20404" in outcome
    assert [row[1] for row in table_rows(page, "attempts")] == ["attempt"]
    assert "reservations.dead" in page
    command = re.search(r'<pre id="redrive">(.*?)</pre>', page).group(1)  # type: ignore[union-attr]
    assert command.startswith("reservations replay redrive --dry-run --outcome failed")
    # The command's filters select exactly this action.
    args = command.split()
    since, until = args[args.index("--since") + 1], args[args.index("--until") + 1]
    from workers.audit.params import parse_time

    chosen = reader.settled_actions(
        ["failed"],
        reservation_sid=args[args.index("--reservation") + 1],
        since=parse_time(since),
        until=parse_time(until),
    )
    assert [a.action_id for a in chosen] == [seeded.failed]


def test_an_applied_action_is_settled_by_its_transition_row_on_its_pages(
    signed_in: TestClient, seeded: Seeded
) -> None:
    """Since 0013 an applied action has no outcome row: its page tells the outcome from the
    transition that settled it, and the pages mark that row as the one that settles."""
    page = signed_in.get(f"/ui/actions/{seeded.applied[0]}").text
    outcome = re.sub(r"<[^>]+>|\s+", " ", re.search(r'<p id="outcome">(.*?)</p>', page, re.S).group(1))  # type: ignore[union-attr]
    assert "applied" in outcome
    assert "HTTP 200" in outcome
    reservation = signed_in.get(f"/ui/reservations/{seeded.reservation_sids[0]}").text
    for shown in (page, reservation):
        marked = re.findall(r'<tr class="kind-(\w+) settles">', shown)
        assert marked, shown
        assert set(marked) == {"transition"}, marked


def test_the_action_page_masks_pii(signed_in: TestClient, seeded: Seeded) -> None:
    page = signed_in.get(f"/ui/actions/{seeded.applied[2]}").text
    found = re.search(r'<pre id="message">(.*?)</pre>', page, re.S)
    assert found
    message = json.loads(html.unescape(found.group(1)))
    assert message["params"]["to"] == "[redacted]"
    assert "5551230000" not in page
    assert "hmac-sha256" not in page


def test_the_overview_counts_outcomes_and_lists_what_needs_attention(
    signed_in: TestClient, client: TestClient, seeded: Seeded
) -> None:
    client.app.state.overview_watch.run_once()  # type: ignore[attr-defined]
    summary = json.loads(signed_in.get("/ui/?export=json").text)
    assert summary["outcomes_last_hour"]["applied"] >= 3
    assert summary["outcomes_last_hour"]["failed"] == 1
    assert summary["outcomes_last_day"]["failed"] == 1
    assert [a["action_id"] for a in summary["attention"]] == [str(seeded.failed)]
    page = signed_in.get("/ui/").text
    assert f"/ui/actions/{seeded.failed}" in page
    assert "<svg" in page
    assert 'class="outcome-failed"' in page
    client.app.state.verify_watch.run_once()  # type: ignore[attr-defined]
    assert "Verified intact at" in signed_in.get("/ui/").text


def test_each_request_is_logged_with_its_auditors_name(
    db_url: str, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(AuditApiConfig(db_url, TOKEN, pool_max=2, auditors=(ALICE,)))
    caplog.set_level(logging.INFO, logger="workers.audit.access")
    with TestClient(app) as named:
        assert named.get("/v1/events", headers={"Authorization": f"Bearer {ALICE.token}"}).status_code == 200
        assert named.get("/v1/events", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        login = named.post("/ui/login", data={"token": ALICE.token}, follow_redirects=False)
        assert login.status_code == 303
        assert named.get(f"/ui/reservations/{seeded.reservation_sids[0]}").status_code == 200
        assert (
            named.get("/v1/events", headers={"Authorization": "Bearer nobody-0123456789abcdef"}).status_code
            == 401
        )
    lines = [
        json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "workers.audit.access"
    ]
    assert [line.get("auditor") for line in lines] == ["alice", auth.UNNAMED, "alice", "alice", None]
    assert all(ALICE.token not in json.dumps(line) and TOKEN not in json.dumps(line) for line in lines)
