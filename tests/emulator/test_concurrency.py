"""Concurrent updates with one ETag: exactly one wins, the others get 412."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twilio.base.exceptions import TwilioRestException

from tests.emulator.conftest import close, reservation_context, twilio_client
from workers.testing.emulator.admin import EmulatorAdmin, ReservationInfo
from workers.testing.emulator.server import EmulatorServer

RACERS = 24


def test_one_etag_one_winner(emulator: EmulatorServer, admin: EmulatorAdmin, seeded: ReservationInfo) -> None:
    clients = [twilio_client(emulator.base_url) for _ in range(RACERS)]
    start = threading.Barrier(RACERS)

    def race(sdk: Any) -> int:
        context = reservation_context(sdk, seeded, "task")
        context.fetch()  # warm the keep-alive connection so the updates arrive together
        start.wait()
        try:
            context.update(if_match="1", reservation_status="accepted")
        except TwilioRestException as refused:
            return int(refused.status)
        return 200

    try:
        with ThreadPoolExecutor(RACERS) as pool:
            statuses = list(pool.map(race, clients))
    finally:
        for sdk in clients:
            close(sdk)
    assert statuses.count(200) == 1
    assert statuses.count(412) == RACERS - 1
    assert len(admin.transitions(seeded.sid)) == 1
    counts = admin.reservation_counts(seeded.sid)
    assert (counts.update.total, counts.update.status(200), counts.update.status(412)) == (
        RACERS,
        1,
        RACERS - 1,
    )
