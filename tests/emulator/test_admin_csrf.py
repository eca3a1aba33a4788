"""The emulator's admin API takes only ``application/json`` writes: what a web page in a
developer's browser can send across origins unasked (text/plain, a form, no body) is refused."""

from __future__ import annotations

import json

import pytest
import requests

from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.server import EmulatorServer

WRITES = [
    ("POST", "/_emulator/reset", ""),
    ("POST", "/_emulator/reservations", '{"sid": "WR' + "1" * 32 + '"}'),
    ("POST", "/_emulator/faults", '{"kind": "internal_error"}'),
    ("DELETE", "/_emulator/faults", ""),
]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_a_write_that_is_not_json_is_refused_and_changes_nothing(
    emulator: EmulatorServer,
    admin: EmulatorAdmin,
    content_type: str | None,
    method: str,
    path: str,
    body: str,
) -> None:
    reservation = admin.create_reservation()
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.request(
        method, f"{emulator.base_url}{path}", data=body.encode(), headers=headers, timeout=10
    )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == 20415
    assert "application/json" in response.json()["message"]
    # Nothing happened: the reservation is still there, no fault was added.
    assert admin.reservation(reservation.sid).sid == reservation.sid
    assert admin.faults() == []


def test_the_same_writes_as_json_are_served(emulator: EmulatorServer, admin: EmulatorAdmin) -> None:
    for method, path, body in WRITES:
        response = requests.request(
            method,
            f"{emulator.base_url}{path}",
            data=(body or "{}").encode(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.status_code < 300, (path, response.text)
    assert (
        json.loads(requests.get(f"{emulator.base_url}/_emulator/health", timeout=10).text)["status"] == "ok"
    )
