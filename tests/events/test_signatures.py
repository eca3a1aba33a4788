"""Only what Twilio signed is recorded: X-Twilio-Signature on the form (Event Callbacks) and on
the JSON body through bodySHA256 (Event Streams), with and without the port, and basic auth."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.audit.support import TestClient
from tests.events.conftest import PUBLIC, TOKEN, config, transitions
from workers.core.sids import new_sid
from workers.events.api import CALLBACK_PATH, STREAMS_PATH, create_app
from workers.events.recording import GroupCommitter
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.events import sign_form, sign_json

pytestmark = pytest.mark.integration


def callback_form(reservation_sid: str, event_type: str = "reservation.accepted") -> dict[str, str]:
    return {
        "EventType": event_type,
        "ResourceType": "Reservation",
        "ResourceSid": reservation_sid,
        "ReservationSid": reservation_sid,
        "WorkspaceSid": new_sid("WS"),
        "Sid": "EV" + new_sid("WR")[2:],
        "TimestampMs": "1767323045123",
    }


def post_form(api: TestClient, form: dict[str, str], signature: str | None, path: str = CALLBACK_PATH) -> int:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    response = api.post(path, data=form, headers=headers)
    if response.status_code == 204:
        assert response.headers["content-type"] == "application/json"
    return int(response.status_code)


@pytest.mark.parametrize(
    "signed_url",
    [f"{PUBLIC}{CALLBACK_PATH}", f"{PUBLIC}:443{CALLBACK_PATH}"],
    ids=["without-port", "with-port"],
)
def test_a_signed_callback_is_recorded(api: TestClient, reader: LedgerReader, signed_url: str) -> None:
    sid = new_sid("WR")
    form = callback_form(sid)
    assert post_form(api, form, sign_form(signed_url, form, TOKEN)) == 204
    rows = transitions(reader, sid)
    assert [(r.to_status, r.source) for r in rows] == [("accepted", "event")]
    assert rows[0].detail is not None
    assert form["Sid"] in rows[0].detail


def test_a_public_url_with_its_port_accepts_a_signature_without_it(
    db_url: str, committer: GroupCommitter, reader: LedgerReader
) -> None:
    app = create_app(config(db_url, public_url="https://events.example.com:443/"), committer=committer)
    with TestClient(app) as api:
        sid = new_sid("WR")
        form = callback_form(sid)
        assert post_form(api, form, sign_form(f"{PUBLIC}{CALLBACK_PATH}", form, TOKEN)) == 204
    assert len(transitions(reader, sid)) == 1


@pytest.mark.parametrize(
    "forgery",
    ["missing", "wrong-token", "tampered", "other-url", "garbage"],
)
def test_a_forged_callback_gets_403_and_records_nothing(
    api: TestClient, reader: LedgerReader, forgery: str
) -> None:
    sid = new_sid("WR")
    form = callback_form(sid)
    url = f"{PUBLIC}{CALLBACK_PATH}"
    signature: str | None = {
        "missing": None,
        "wrong-token": sign_form(url, form, "not-the-auth-token"),
        "tampered": sign_form(url, {**form, "EventType": "reservation.rejected"}, TOKEN),
        "other-url": sign_form(f"https://attacker.example.com{CALLBACK_PATH}", form, TOKEN),
        "garbage": "bm90IGEgc2lnbmF0dXJl",
    }[forgery]
    response = api.post(
        CALLBACK_PATH, data=form, headers={} if signature is None else {"X-Twilio-Signature": signature}
    )
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert reader.history(reservation_sid=sid) == []


def stream_body(reservation_sid: str, event_type: str = "reservation.accepted") -> bytes:
    event = {
        "specversion": "1.0",
        "type": f"com.twilio.taskrouter.{event_type}",
        "id": "NO" + new_sid("WR")[2:],
        "time": "2026-01-02T03:04:05.123Z",
        "data": {
            "sid": "EV" + new_sid("WR")[2:],
            "payload": {"eventtype": event_type, "reservation_sid": reservation_sid},
        },
    }
    return json.dumps([event]).encode()


def post_stream(
    api: TestClient, body: bytes, signed_url: str | None, signature: str | None, **headers: str
) -> int:
    target = STREAMS_PATH
    if signed_url is not None and urlsplit(signed_url).query:
        target += "?" + urlsplit(signed_url).query
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    response = api.post(target, content=body, headers={"Content-Type": "application/json", **headers})
    return int(response.status_code)


@pytest.mark.parametrize("port", ["", ":443"], ids=["without-port", "with-port"])
def test_a_signed_event_streams_delivery_is_recorded(
    api: TestClient, reader: LedgerReader, port: str
) -> None:
    sid = new_sid("WR")
    body = stream_body(sid)
    signed_url, signature = sign_json(f"https://events.example.com{port}{STREAMS_PATH}", body, TOKEN)
    assert post_stream(api, body, signed_url, signature) == 204
    assert [(r.to_status, r.source) for r in transitions(reader, sid)] == [("accepted", "event")]


@pytest.mark.parametrize("forgery", ["body-changed", "no-body-hash", "wrong-token", "missing"])
def test_a_forged_event_streams_delivery_gets_403(
    api: TestClient, reader: LedgerReader, forgery: str
) -> None:
    sid = new_sid("WR")
    body = stream_body(sid)
    signed_url, signature = sign_json(f"{PUBLIC}{STREAMS_PATH}", body, TOKEN)
    if forgery == "body-changed":
        body = stream_body(sid, "reservation.rejected")
    elif forgery == "no-body-hash":
        signed_url, signature = f"{PUBLIC}{STREAMS_PATH}", sign_form(f"{PUBLIC}{STREAMS_PATH}", {}, TOKEN)
    elif forgery == "wrong-token":
        signed_url, signature = sign_json(f"{PUBLIC}{STREAMS_PATH}", body, "not-the-auth-token")
    sent = None if forgery == "missing" else signature
    assert post_stream(api, body, signed_url, sent) == 403
    assert reader.history(reservation_sid=sid) == []


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.mark.parametrize(
    ("mode", "credentials", "signed", "status"),
    [
        ("basic", "twilio:s3cret", False, 204),
        ("basic", "twilio:wrong", True, 403),
        ("basic", None, True, 403),
        ("signature,basic", "twilio:s3cret", False, 403),
        ("signature,basic", "twilio:s3cret", True, 204),
        ("signature,basic", "twilio:wrong", True, 403),
    ],
)
def test_event_streams_with_basic_auth(
    db_url: str,
    committer: GroupCommitter,
    reader: LedgerReader,
    mode: str,
    credentials: str | None,
    signed: bool,
    status: int,
) -> None:
    app = create_app(
        config(db_url, streams_auth=tuple(mode.split(",")), basic_auth="twilio:s3cret"), committer=committer
    )
    sid = new_sid("WR")
    body = stream_body(sid)
    signed_url, signature = sign_json(f"{PUBLIC}{STREAMS_PATH}", body, TOKEN) if signed else (None, None)
    headers = {"Authorization": basic(credentials)} if credentials else {}
    with TestClient(app) as api:
        assert post_stream(api, body, signed_url, signature, **headers) == status
    assert len(transitions(reader, sid)) == (1 if status == 204 else 0)


@pytest.mark.parametrize("path", [CALLBACK_PATH, STREAMS_PATH])
@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "streamed"])
def test_a_delivery_over_the_size_limit_gets_413_and_records_nothing(
    api: TestClient, reader: LedgerReader, path: str, chunked: bool
) -> None:
    """Hostile sizes: refused whether the sender declares its length or streams it in chunks."""
    from workers.events.api import MAX_BODY

    sid = new_sid("WR")
    form = "&".join(f"{k}={v}" for k, v in callback_form(sid).items()).encode()
    body = form + b"&Padding=" + b"x" * MAX_BODY

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    answer = api.post(
        path,
        content=chunks() if chunked else body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
    )
    assert answer.status_code == 413
    assert transitions(reader, sid) == []


def test_the_callback_path_is_documented_and_other_methods_get_405(
    api: TestClient, reader: LedgerReader, db_url: str, committer: GroupCommitter
) -> None:
    answer = api.get(CALLBACK_PATH)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"
    assert "post" in api.get("/openapi.json").json()["paths"][CALLBACK_PATH]
    # The FastAPI app alone (without the fast handler ahead of it) answers a callback the same way.
    alone = create_app(config(db_url), committer=committer).api
    with TestClient(alone) as client:
        sid = new_sid("WR")
        form = callback_form(sid)
        assert post_form(client, form, "forged") == 403
        assert post_form(client, form, sign_form(f"{PUBLIC}{CALLBACK_PATH}", form, TOKEN)) == 204
    assert [(r.to_status, r.source) for r in transitions(reader, sid)] == [("accepted", "event")]
