"""The audit API against a real ledger: every endpoint, filters, auth, hostile input, paging."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from tests.audit.conftest import SEEDED_ROWS, TOKEN, Seeded, action, apply
from tests.audit.support import TestClient, eventually
from workers.audit.api import AuditApiConfig, create_app
from workers.core.sids import new_sid
from workers.errors import ConfigurationError
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.queries import QUERIES
from workers.ledger.writer import PostgresLedgerWriter


def ok(client: TestClient, path: str, **params: Any) -> Any:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_readiness_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    response = client.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": [{"name": "ledger", "status": "ok"}]}


def test_readiness_fails_when_the_database_does_not_answer(seeded: Seeded) -> None:
    config = AuditApiConfig("postgresql://nobody@127.0.0.1:1/none", TOKEN, pool_max=1, pool_timeout=0.5)
    app = create_app(config)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "not_ready", "checks": [{"name": "ledger", "status": "fail"}]}
    assert "127.0.0.1:1" not in response.text  # the log says where; the probe's answer does not


def v1_paths(seeded: Seeded) -> list[str]:
    sid = seeded.reservation_sids[0]
    return [
        "/v1/events",
        f"/v1/reservations/{sid}",
        f"/v1/reservations/{sid}/history",
        f"/v1/reservations/{sid}/timeline",
        f"/v1/tasks/{seeded.task_sids[0]}/history",
        f"/v1/workers/{seeded.worker_sids[0]}/history",
        f"/v1/workspaces/{seeded.workspace_sid}/history",
        f"/v1/actions/{seeded.applied[0]}",
    ]


@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN],
)
def test_every_resource_refuses_a_missing_or_wrong_token(
    client: TestClient, seeded: Seeded, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for path in v1_paths(seeded):
        anonymous = TestClient(client.app, headers=headers)
        response = anonymous.get(path)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
        assert "bearer token" in response.json()["message"]


def test_a_wrong_token_is_refused_before_parameters_are_looked_at(client: TestClient) -> None:
    anonymous = TestClient(client.app)
    for path, params in (("/v1/events", {"limit": "0"}), ("/v1/reservations/bad/history", {})):
        assert anonymous.get(path, params=params).status_code == 401


def test_every_resource_answers_with_the_token(client: TestClient, seeded: Seeded) -> None:
    for path in v1_paths(seeded):
        assert client.get(path).status_code == 200, path


def test_no_token_configured_refuses_to_start_unless_insecure_local(db_url: str) -> None:
    with pytest.raises(ConfigurationError, match="AUDIT_API_TOKEN"):
        create_app(AuditApiConfig(db_url, None))
    with pytest.raises(ConfigurationError):
        create_app(AuditApiConfig(db_url, ""))
    with TestClient(create_app(AuditApiConfig(db_url, None, insecure_local=True, pool_max=1))) as client:
        assert client.get("/v1/events", params={"limit": 1}).status_code == 200


def test_rows_use_the_audit_names(client: TestClient, seeded: Seeded) -> None:
    page = ok(client, f"/v1/reservations/{seeded.reservation_sids[2]}/history")
    failed = [row for row in page["items"] if row["kind"] == "outcome"]
    assert len(failed) == 1
    row = failed[0]
    assert row["outcome"] == "failed"
    assert row["twilio_error_code"] == 20404
    assert row["http_status"] == 404
    assert isinstance(row["position"], int)
    assert row["cursor"].endswith(f":{row['position']}")
    assert "seq" not in row  # the ledger's words, no synonyms (workers.core.vocabulary)
    assert "error_code" not in row
    assert "tx_id" not in row


def test_reservation_history_is_its_chain_in_order(client: TestClient, seeded: Seeded) -> None:
    page = ok(client, f"/v1/reservations/{seeded.reservation_sids[0]}/history")
    kinds = [row["kind"] for row in page["items"]]
    assert kinds == ["received", "attempt", "transition"] * 2  # the transition settles (0013)
    assert [row["outcome"] for row in page["items"]] == [None, None, "applied"] * 2
    assert [row["chain_seq"] for row in page["items"]] == list(range(1, 7))
    assert page["has_more"] is False
    assert page["next_cursor"] == page["items"][-1]["cursor"]
    transitions = [r for r in page["items"] if r["kind"] == "transition"]
    assert [(r["from_status"], r["to_status"]) for r in transitions] == [
        ("pending", "accepted"),
        ("accepted", "completed"),
    ]
    assert [(r["etag_before"], r["etag_after"]) for r in transitions] == [("1", "2"), ("2", "3")]
    assert [r["source"] for r in transitions] == ["action", "action"]
    assert {r["source"] for r in page["items"] if r["kind"] != "transition"} == {None}


def test_task_worker_and_workspace_history(client: TestClient, seeded: Seeded) -> None:
    # Reservations 0 and 2 are on task 0 / worker 0, reservation 1 on task 1 / worker 1.
    task = ok(client, f"/v1/tasks/{seeded.task_sids[0]}/history")["items"]
    expected = {seeded.reservation_sids[0], seeded.reservation_sids[2]}
    assert {row["reservation_sid"] for row in task} == expected
    assert len(task) == 9
    worker = ok(client, f"/v1/workers/{seeded.worker_sids[1]}/history")["items"]
    assert {row["reservation_sid"] for row in worker} == {seeded.reservation_sids[1]}
    workspace = ok(client, f"/v1/workspaces/{seeded.workspace_sid}/history")["items"]
    assert len(workspace) == SEEDED_ROWS
    seqs = [row["position"] for row in workspace]
    assert len(set(seqs)) == len(seqs)


def test_event_filters(client: TestClient, seeded: Seeded) -> None:
    ws = seeded.workspace_sid

    def events(**params: Any) -> list[dict[str, Any]]:
        return list(ok(client, "/v1/events", workspace_sid=ws, **params)["items"])

    assert [r["kind"] for r in events(kind="transition")] == ["transition"] * 3
    assert [r["action_id"] for r in events(outcome="failed")] == [str(seeded.failed)]
    # An applied action's outcome is on the transition that settled it (migration 0013).
    applied = events(outcome="applied")
    assert [(r["kind"], r["action_id"]) for r in applied] == [("transition", str(a)) for a in seeded.applied]
    assert {r["kind"] for r in events(twilio_error_code=20404)} == {"attempt", "outcome"}
    assert {r["action_id"] for r in events(action_id=str(seeded.applied[1]))} == {str(seeded.applied[1])}
    assert len(events(correlation_id=seeded.correlation_id)) == 9
    assert [r["action_id"] for r in events(correlation_id="other", kind="received")] == [str(seeded.failed)]
    everything = events()
    middle = everything[5]["recorded_at"]
    later = events(since=middle)
    earlier = events(until=middle)
    assert len(later) + len(earlier) == SEEDED_ROWS
    assert later[0]["position"] == everything[5]["position"]
    assert events(since="2999-01-01T00:00:00Z") == []
    assert events(reservation_sid=seeded.reservation_sids[1], task_sid=seeded.task_sids[1]) == [
        r for r in everything if r["reservation_sid"] == seeded.reservation_sids[1]
    ]
    assert events(reservation_sid=new_sid("WR")) == []


def test_an_actions_whole_story(client: TestClient, seeded: Seeded) -> None:
    story = ok(client, f"/v1/actions/{seeded.failed}")
    assert story["action"]["outcome"] == "failed"
    assert story["action"]["attempts"] == 1
    assert [e["kind"] for e in story["events"]] == ["received", "attempt", "outcome"]
    assert story["redriven_as"] == []
    assert story["redrive_of"] is None
    missing = client.get(f"/v1/actions/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert "never received" in missing.json()["message"]


def test_pii_is_only_ever_a_keyed_hash(client: TestClient, seeded: Seeded) -> None:
    story = ok(client, f"/v1/actions/{seeded.applied[2]}")
    assert story["action"]["params"]["to"].startswith("hmac-sha256:")
    assert "+15551230000" not in str(story)


def test_reservation_projection_and_timeline(client: TestClient, seeded: Seeded) -> None:
    sid = seeded.reservation_sids[0]
    state = ok(client, f"/v1/reservations/{sid}")
    assert (state["status"], state["etag"]) == ("completed", "3")
    timeline = ok(client, f"/v1/reservations/{sid}/timeline")
    assert [(s["from_status"], s["to_status"], s["outcome"]) for s in timeline["steps"]] == [
        ("pending", "accepted", "applied"),
        ("accepted", "completed", "applied"),
    ]
    assert state["last_position"] == timeline["steps"][-1]["position"]
    assert client.get(f"/v1/reservations/{new_sid('WR')}").status_code == 404
    assert ok(client, f"/v1/reservations/{new_sid('WR')}/timeline")["steps"] == []


INJECTION = "WR' OR '1'='1"


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/v1/events", {"reservation_sid": INJECTION}, "reservation_sid"),
        ("/v1/events", {"reservation_sid": "WR" + "g" * 32}, "reservation_sid"),
        ("/v1/events", {"task_sid": "WR" + "0" * 32}, "task_sid"),
        ("/v1/events", {"worker_sid": "WK" + "0" * 33}, "worker_sid"),
        ("/v1/events", {"workspace_sid": "'; DROP TABLE ledger.events; --"}, "workspace_sid"),
        ("/v1/events", {"action_id": "1; DELETE FROM ledger.actions"}, "action_id"),
        ("/v1/events", {"limit": "0"}, "limit"),
        ("/v1/events", {"limit": "1001"}, "limit"),
        ("/v1/events", {"limit": "9" * 40}, "limit"),
        ("/v1/events", {"limit": "-1"}, "limit"),
        ("/v1/events", {"limit": "ten"}, "limit"),
        ("/v1/events", {"since": "yesterday"}, "since"),
        ("/v1/events", {"since": "2026-02-30T00:00:00Z"}, "since"),
        ("/v1/events", {"since": "2026-01-01T00:00:00"}, "since"),  # no offset
        ("/v1/events", {"until": "1700000000"}, "until"),
        ("/v1/events", {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ("/v1/events", {"since": "2026-01-01T00:00:00Z' OR 1=1 --"}, "since"),
        ("/v1/events", {"kind": "transition'--"}, "kind"),
        ("/v1/events", {"outcome": "won"}, "outcome"),
        ("/v1/events", {"twilio_error_code": "99999999999999999999"}, "twilio_error_code"),
        ("/v1/events", {"twilio_error_code": "-5"}, "twilio_error_code"),
        ("/v1/events", {"after": "garbage"}, "after"),
        ("/v1/events", {"after": "1:2; DROP TABLE x"}, "after"),
        ("/v1/events", {"after": "99999999999999999999:1"}, "after"),
        ("/v1/events", {"after": "1:9999999999999999999"}, "after"),
        ("/v1/events", {"correlation_id": "a\x00b"}, "correlation_id"),
        ("/v1/events", {"correlation_id": "x" * 201}, "correlation_id"),
        ("/v1/reservations/WRnot-a-sid/history", {}, "reservation_sid"),
        (f"/v1/reservations/{'WR' + '0' * 32}%27%20OR%201=1/history", {}, "reservation_sid"),
        ("/v1/tasks/WK00000000000000000000000000000000/history", {}, "task_sid"),
        ("/v1/workers/x/history", {}, "worker_sid"),
        ("/v1/workspaces/WS/history", {}, "workspace_sid"),
        ("/v1/actions/not-a-uuid", {}, "action_id"),
        ("/v1/actions/' OR 1=1 --", {}, "action_id"),
    ],
)
def test_hostile_filters_get_a_clear_422(
    client: TestClient, path: str, params: dict[str, str], named: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["message"].startswith(named) or f"; {named}" in body["message"], body["message"]


def test_injection_in_free_text_matches_nothing_and_harms_nothing(client: TestClient, seeded: Seeded) -> None:
    for value in ("' OR '1'='1", "x'); DROP TABLE ledger.events; --", "%", "\\", "' UNION SELECT 1 --"):
        assert ok(client, "/v1/events", correlation_id=value)["items"] == []
    assert len(ok(client, f"/v1/workspaces/{seeded.workspace_sid}/history")["items"]) == SEEDED_ROWS


def test_limit_and_cursor_pages(client: TestClient, seeded: Seeded) -> None:
    path = f"/v1/workspaces/{seeded.workspace_sid}/history"
    everything = ok(client, path, limit=1000)["items"]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["after"] = cursor
        page = ok(client, path, **params)
        assert len(page["items"]) <= 4
        seen += [row["position"] for row in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == [row["position"] for row in everything]
    # An empty page hands the cursor back, so a client can poll from where it stands.
    assert ok(client, path, after=cursor)["next_cursor"] == cursor


def test_paging_across_concurrent_inserts_misses_and_repeats_nothing(
    client: TestClient, writer: PostgresLedgerWriter, db_url: str
) -> None:
    """Writers append while a client pages; a transaction with a smaller position commits after a
    larger one. Following next_cursor, the client sees every row exactly once."""
    stream = Seeded()
    path = f"/v1/workspaces/{stream.workspace_sid}/history"
    lock = threading.Lock()
    written = 0

    def write() -> None:
        nonlocal written
        for etag in range(1, 51):
            apply(writer, action(stream, etag % 3), "pending", "accepted", etag)
            with lock:
                written += 3  # received, attempt, the transition that settles it

    # A slow transaction takes a small position first and commits last.
    with connect(db_url, Role.WRITER) as slow:
        slow.autocommit = False
        slow.execute(
            QUERIES["record_transition"],
            {
                "action_id": None,
                "reservation_sid": stream.reservation_sids[0],
                "workspace_sid": stream.workspace_sid,
                "task_sid": None,
                "worker_sid": None,
                "from_status": "pending",
                "to_status": "timeout",
                "etag_before": "0",
                "etag_after": "0",
                "attempt": None,
                "http_status": None,
                "twilio_request_id": None,
                "duration_ms": None,
                "outcome": None,
                "detail": "observed",
                "worker_host": "test",
                "worker_pid": 1,
                "source": None,
                "trace_id": None,
            },
        )
        threads = [threading.Thread(target=write) for _ in range(2)]
        for thread in threads:
            thread.start()
        seen: list[int] = []
        cursor = None
        pages = 0
        while pages < 15 or any(t.is_alive() for t in threads):
            params: dict[str, Any] = {"limit": 7}
            if cursor is not None:
                params["after"] = cursor
            page = ok(client, path, **params)
            seen += [row["position"] for row in page["items"]]
            cursor = page["next_cursor"]
            pages += 1
            if pages == 10:
                slow.commit()
        for thread in threads:
            thread.join()
        slow.commit()

    def drain() -> list[int]:
        nonlocal cursor
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor is not None:
                params["after"] = cursor
            page = ok(client, path, **params)
            seen.extend(row["position"] for row in page["items"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return seen

    expected = written + 1
    eventually(drain, lambda rows: len(rows) >= expected)
    everything = [row["position"] for row in ok(client, path, limit=1000)["items"]]
    assert len(everything) == expected
    assert sorted(seen) == sorted(everything)
    assert len(seen) == len(set(seen)), "a row was repeated"
    assert seen == everything, "pages are not in ledger order"
