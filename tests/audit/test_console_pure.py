"""The console's pure parts: auditor tokens and sessions, the chain verdict, the pictures' layout,
the search form, where sign-in may lead, and spreadsheet-safe CSV cells."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workers.audit import auth
from workers.audit.charts import coarser, outcome_chart, timeline_picture
from workers.audit.console import _cell, safe_next, search_filters
from workers.audit.integrity import BROKEN, EMPTY, INTACT, chain_state
from workers.audit.timeline import Step
from workers.errors import ConfigurationError
from workers.ledger.models import ChainRow, ChainSeals, OutcomeCount

ALICE = auth.Auditor("alice", "alice-token-0123456789")
BOB = auth.Auditor("bob", "bob-token-0123456789ab")


def test_named_tokens_are_parsed_from_commas_lines_and_comments() -> None:
    text = "# auditors\nalice:alice-token-0123456789, bob: bob-token-0123456789ab\n\n"
    assert auth.parse_auditors(text, origin="AUDIT_API_TOKENS") == (ALICE, BOB)
    assert ALICE.token not in repr(ALICE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "must be name:token"),
        (":x-token-0123456789abc", "must be name:token"),
        ("al ice:x-token-0123456789abc", "must be name:token"),
        ("alice:short", "shorter than 16"),
    ],
)
def test_bad_named_tokens_are_refused_without_printing_them(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        auth.parse_auditors(text, origin="AUDIT_API_TOKENS")
    assert "x-token-0123456789abc" not in str(refused.value)


def test_names_and_tokens_must_be_unique_and_the_unnamed_token_joins_them() -> None:
    assert auth.auditors(token="single-token-0123456789", named=[ALICE]) == (
        ALICE,
        auth.Auditor(auth.UNNAMED, "single-token-0123456789"),
    )
    with pytest.raises(ConfigurationError, match="given twice"):
        auth.auditors(named=[ALICE, auth.Auditor("alice", "another-token-0123456789")])
    with pytest.raises(ConfigurationError, match="share one token"):
        auth.auditors(token=ALICE.token, named=[ALICE])
    assert auth.auditors() == ()


def test_identify_finds_the_auditor_of_a_token() -> None:
    assert auth.identify(BOB.token, [ALICE, BOB]) == BOB
    assert auth.identify(BOB.token + "x", [ALICE, BOB]) is None
    assert auth.identify("", [ALICE, BOB]) is None


def test_a_session_cookie_names_its_auditor_until_it_expires_and_cannot_be_forged() -> None:
    now = 1_800_000_000.0
    cookie = auth.session_cookie(ALICE, now)
    assert ALICE.token not in cookie
    assert auth.session_auditor(cookie, [ALICE, BOB], now + 10) == ALICE
    assert auth.session_auditor(cookie, [ALICE, BOB], now + auth.SESSION_SECONDS) is None  # expired
    assert auth.session_auditor(cookie, [BOB], now) is None  # alice's token was removed
    rotated = auth.Auditor("alice", "alice-new-token-0123456789")
    assert auth.session_auditor(cookie, [rotated], now) is None  # her token changed
    name, expires, mac = cookie.split(".")
    later = auth.session_cookie(ALICE, now + 3600).split(".")[1]
    assert auth.session_auditor(f"{name}.{later}.{mac}", [ALICE], now) is None  # extended by hand
    bob_name = auth.session_cookie(BOB, now).split(".")[0]
    assert auth.session_auditor(f"{bob_name}.{expires}.{mac}", [ALICE, BOB], now) is None  # renamed
    for junk in ("", "a.b", "a.b.c.d", "!!!.1.x", f"{name}.-1.{mac}"):
        assert auth.session_auditor(junk, [ALICE], now) is None


def test_credentials_in_a_url_are_noticed_by_name_or_value() -> None:
    assert auth.credentials_in_url("/ui/", [("token", "x")], [ALICE])
    assert auth.credentials_in_url("/ui/", [("Access_Token", "x")], [ALICE])
    assert auth.credentials_in_url("/ui/", [("q", ALICE.token)], [ALICE])
    assert auth.credentials_in_url(f"/ui/reservations/{ALICE.token}", [], [ALICE])
    assert not auth.credentials_in_url("/ui/search", [("reservation_sid", "WR" + "0" * 32)], [ALICE])


def row(seq: int, *, hash_ok: bool = True, link_ok: bool = True, seq_ok: bool = True) -> ChainRow:
    return ChainRow(seq * 10, seq, hash_ok, link_ok, seq_ok, bytes([seq]))


def seals(head: int | None, checkpoint: int | None = None, sealed: int | None = None) -> ChainSeals:
    return ChainSeals(
        head,
        bytes([head]) if head is not None else None,
        checkpoint,
        sealed,
        bytes([sealed]) if sealed is not None else None,
        sealed * 10 if sealed is not None else None,
    )


def test_the_chain_verdict() -> None:
    rows = [row(1), row(2), row(3)]
    assert chain_state([], seals(None)).state == EMPTY
    assert chain_state(rows, seals(3)).summary == "intact, not yet sealed by a checkpoint"
    assert chain_state(rows, seals(3, 7, 3)).summary == "verified up to checkpoint 7"
    assert chain_state(rows, seals(3, 7, 2)).summary == (
        "verified up to checkpoint 7, 1 row(s) since, linked but not yet sealed"
    )
    altered = chain_state([row(1), row(2, hash_ok=False), row(3)], seals(3, 7, 3))
    assert (altered.state, altered.summary, altered.position) == (BROKEN, "altered at position 20", 20)
    assert chain_state([row(1), row(3, seq_ok=False)], seals(3)).summary == "removed before position 30"
    assert chain_state([row(1), row(2, link_ok=False)], seals(2)).summary.startswith(
        "broken link at position 20"
    )
    assert chain_state(rows, seals(4)).summary.startswith("the chain does not end on its head")
    assert chain_state([], seals(3)).state == BROKEN
    resealed = ChainSeals(3, bytes([3]), 7, 2, b"other", 20)
    assert chain_state(rows, resealed).summary.startswith("altered at position 20: it differs from")
    assert chain_state(rows, seals(3, 7, 3)).state == INTACT


def step(to: str, before: str | None, action: uuid.UUID | None) -> Step:
    source = "action" if action else "fetch"
    return Step(
        position=1,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        from_status=before,
        to_status=to,
        source=source,
        etag=None,
        action_id=action,
        action=None,
        outcome=None,
    )


def test_the_timeline_picture_puts_steps_left_to_right_on_their_status_lanes() -> None:
    ours = uuid.uuid4()
    picture = timeline_picture([step("accepted", "pending", ours), step("wrapping", "accepted", None)])
    assert [lane.status for lane in picture.lanes] == ["pending", "accepted", "wrapping"]
    lane_y = {lane.status: lane.y for lane in picture.lanes}
    first, second = picture.points
    assert first.x < second.x
    assert (first.y, second.y) == (lane_y["accepted"], lane_y["wrapping"])
    assert first.label == f"action {str(ours)[:8]}"
    assert second.label == "fetch"
    # From where it stood before (pending) to each step in turn.
    assert [(s.y1, s.y2) for s in picture.segments] == [
        (lane_y["pending"], lane_y["accepted"]),
        (lane_y["accepted"], lane_y["wrapping"]),
    ]
    assert timeline_picture([]).points == []


def test_the_outcome_chart_stacks_counts_with_the_latest_bucket_rightmost() -> None:
    counts = [OutcomeCount("applied", 0, 6), OutcomeCount("failed", 0, 2), OutcomeCount("applied", 13, 3)]
    hour = outcome_chart("hour", counts, 12, 300)
    assert hour.totals["applied"] == 6
    assert hour.totals["failed"] == 2
    assert hour.bars[-1].total == 8
    assert hour.bars[-1].label == "now"
    assert sum(part.height for part in hour.bars[-1].parts) == pytest.approx(120, abs=2)
    day = outcome_chart("day", coarser(counts, 12), 24, 3600)
    assert day.totals["applied"] == 9
    assert day.bars[-2].total == 3


def test_the_search_form_names_each_bad_field() -> None:
    errors, filters, _ = search_filters({"reservation_sid": "WR12", "action_id": "x", "since": "soon"})
    assert set(errors) == {"reservation_sid", "action_id", "since"}
    assert filters is None
    sid = "WR" + "a" * 32
    errors, filters, after = search_filters(
        {"reservation_sid": sid, "since": "2026-01-31 09:00", "after": "5:7"}
    )
    assert errors == {}
    assert filters is not None
    assert filters.reservation_sid == sid
    assert filters.since == datetime(2026, 1, 31, 9, 0, tzinfo=UTC)
    assert (after.tx_id, after.position) == (5, 7)  # type: ignore[union-attr]
    assert search_filters({}) == ({}, None, None)  # nothing asked: nothing searched
    errors, _, _ = search_filters({"since": "2026-02-01 00:00", "until": "2026-01-01 00:00"})
    assert errors == {"until": "is before since"}


@pytest.mark.parametrize(
    ("wanted", "goes"),
    [
        ("/ui/reservations/WR1", "/ui/reservations/WR1"),
        ("//evil.example/ui/", "/ui/"),
        ("https://evil.example/ui/", "/ui/"),
        ("/v1/events", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        (None, "/ui/"),
    ],
)
def test_sign_in_leads_only_to_console_pages(wanted: str | None, goes: str) -> None:
    assert safe_next(wanted) == goes


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted() -> None:
    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    assert _cell("@SUM(1)") == "'@SUM(1)"
    assert _cell("-12") == "-12"
    assert _cell(None) == ""
    assert _cell({"a": 1}) == '{"a": 1}'


def test_the_background_verify_interval_is_a_setting() -> None:
    from workers.config import Settings

    assert Settings.from_env({}).audit_verify_interval == 3600
    assert Settings.from_env({"AUDIT_VERIFY_INTERVAL": "0"}).audit_verify_interval == 0
    with pytest.raises(ConfigurationError, match="AUDIT_VERIFY_INTERVAL"):
        Settings.from_env({"AUDIT_VERIFY_INTERVAL": "-5"})


def test_audit_api_refuses_bad_named_tokens_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from workers.cli import main

    short = CliRunner().invoke(main, ["audit-api"], env={"AUDIT_API_TOKENS": "alice:tooshort"})
    assert short.exit_code == 2
    assert short.output.strip() == "error: AUDIT_API_TOKENS: the token of alice is shorter than 16 characters"
    missing = CliRunner().invoke(main, ["audit-api"], env={"AUDIT_API_TOKENS_FILE": str(tmp_path / "none")})
    assert missing.exit_code == 2
    assert missing.output.startswith("error: ")
    assert len(missing.output.strip().splitlines()) == 1
