"""Header modes: ETag everywhere by default; Twilio's OpenAPI spellings with --strict-headers."""

from __future__ import annotations

from typing import Any

from tests.emulator.conftest import reservation_context, reservation_list
from workers.testing.emulator.admin import EmulatorAdmin


def etag_keys(headers: dict[str, str]) -> list[str]:
    return [key for key in headers if key.lower() == "etag"]


def test_default_mode_sends_etag_on_every_operation(client: Any, admin: EmulatorAdmin) -> None:
    seeded = admin.create_reservation()
    for scope in ("task", "worker"):
        context = reservation_context(client, seeded, scope)
        fetched = context.fetch_with_http_info()
        assert etag_keys(fetched.headers) == ["ETag"]
        updated = context.update_with_http_info(
            if_match=fetched.headers["ETag"],
            instruction="call",
            call_from="+1555",
            call_url="https://x.test/t",
        )
        assert etag_keys(updated.headers) == ["ETag"]
        assert etag_keys(reservation_list(client, seeded, scope).list_with_http_info().headers) == ["ETag"]


def test_strict_mode_follows_the_openapi_spec(strict_client: Any, strict_admin: EmulatorAdmin) -> None:
    seeded = strict_admin.create_reservation()
    task = reservation_context(strict_client, seeded, "task")
    fetched = task.fetch_with_http_info()
    assert etag_keys(fetched.headers) == ["ETag"]
    updated = task.update_with_http_info(if_match=fetched.headers["ETag"], reservation_status="accepted")
    assert etag_keys(updated.headers) == ["Etag"]
    assert updated.headers["Etag"] == "2"
    assert etag_keys(reservation_list(strict_client, seeded, "task").list_with_http_info().headers) == [
        "ETag"
    ]

    worker = reservation_context(strict_client, seeded, "worker")
    assert etag_keys(worker.fetch_with_http_info().headers) == []
    assert etag_keys(worker.update_with_http_info(if_match="2", reservation_status="wrapping").headers) == []
    assert etag_keys(reservation_list(strict_client, seeded, "worker").list_with_http_info().headers) == [
        "ETag"
    ]
    assert strict_admin.reservation(seeded.sid).status == "wrapping"
