"""The emulator's admin API takes only ``application/json`` writes: what a web page in a
developer's browser can send across origins unasked (text/plain, a form, no body) is refused."""

from __future__ import annotations

import json

import pytest
import requests

from workers.errors import UnknownResource
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.emulator.server import EmulatorServer

WRITES = [
    ("POST", "/_emulator/reset", ""),
    ("POST", "/_emulator/reservations", '{"sid": "WR' + "1" * 32 + '"}'),
    ("POST", "/_emulator/faults", '{"kind": "internal_error"}'),
    ("DELETE", "/_emulator/faults", ""),
]


def test_a_write_that_is_not_json_is_refused_and_changes_nothing(
    emulator: EmulatorServer, admin: EmulatorAdmin
) -> None:
    reservation = admin.create_reservation()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x", None):
        for method, path, body in WRITES:
            headers = {"Content-Type": content_type} if content_type else {}
            response = requests.request(
                method, f"{emulator.base_url}{path}", data=body.encode(), headers=headers, timeout=10
            )
            assert response.status_code == 415, (content_type, path, response.text)
            assert response.json()["code"] == 20415
            assert "application/json" in response.json()["message"]
    # Nothing happened: the reservation is still there, no fault was added, nothing was created.
    assert admin.reservation(reservation.sid).sid == reservation.sid
    assert admin.faults() == []
    with pytest.raises(UnknownResource):
        admin.reservation("WR" + "1" * 32)


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
