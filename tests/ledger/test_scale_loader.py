"""The scale loader (workers.testing.scale) writes the rows the ledger writes since 0013, and a
registry and a projection that say what its rows say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.ledger.conftest import superuser
from workers.ledger.connector import connect
from workers.ledger.models import Role
from workers.ledger.verify import verify
from workers.replay.rebuild import rebuild
from workers.testing import scale

IN_FLIGHT = 150  # more than one block of interleaved reservations, the last one partial


def test_the_loaded_ledger_is_what_the_ledger_writes(fresh_db_url: str) -> None:
    end = datetime.now(UTC) - timedelta(minutes=1)
    shape = scale.plan(fresh_db_url, 2400, 0, end - timedelta(days=40), end, in_flight=IN_FLIGHT)
    scale.load(fresh_db_url, shape, 0, shape.top, jobs=1)
    with superuser(fresh_db_url) as conn:
        rows = conn.execute(
            "SELECT chain_key, chain_seq, position, kind, outcome, from_status, to_status, etag_after,"
            " http_status, source, action_id, recorded_at FROM ledger.events ORDER BY chain_key, chain_seq"
        ).fetchall()
        registry = {
            a: (outcome, received_at, outcome_at)
            for a, outcome, received_at, outcome_at in conn.execute(
                "SELECT action_id, outcome, received_at, outcome_at FROM ledger.actions"
            )
        }
    assert len(rows) == shape.reservations * scale.ROWS_PER_RESERVATION
    assert len(registry) == shape.reservations * scale.ACTIONS_PER_RESERVATION
    failed = 0
    for row in rows:
        sid, seq, position, kind, outcome, from_status, to_status, etag_after, http, source, action, at = row
        r = int(sid[2:], 16)
        assert position == scale.position(shape.in_flight, r, seq)
        assert action == scale.action_id(r * 2 + (seq - 1) // scale.ROWS_PER_ACTION)
        step = (seq - 1) % scale.ROWS_PER_ACTION
        if step == 0:
            assert (kind, at) == ("received", registry[action][1])
        elif step == 1:
            assert (kind, outcome) == ("intent", None)
        elif kind == "transition":  # an applied action's transition carries its outcome (0013)
            assert (outcome, http, source) == ("applied", 200, "action")
            assert None not in (from_status, to_status, etag_after)
            assert (outcome, at) == registry[action][::2]
        else:  # a failed update: an outcome row, no transition
            failed += 1
            assert (kind, outcome, http, source) == ("outcome", "failed", 400, None)
            assert (from_status, to_status, etag_after) == (None, None, None)
            assert (outcome, at) == registry[action][::2]
    assert failed == len(range(0, shape.reservations, 100))
    with connect(fresh_db_url, Role.READER) as conn:
        assert verify(conn) == []
    assert rebuild(fresh_db_url).differences == []  # the projection: each reservation's last transition
