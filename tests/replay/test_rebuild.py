"""``reservations replay rebuild`` refuses to trust a ledger whose chains do not verify."""

from __future__ import annotations

from tests.audit.conftest import seed
from tests.ledger.conftest import open_writer, superuser
from tests.replay.conftest import cli


def test_rebuild_verifies_the_chains_first(fresh_db_url: str) -> None:
    with open_writer(fresh_db_url) as ledger:
        seeded = seed(ledger)
    env = {"DATABASE_URL": fresh_db_url}
    intact = cli(env, "replay", "rebuild")
    assert intact.exit_code == 0, intact.output
    assert "0 difference(s) over 2 reservation(s)" in intact.stdout

    with superuser(fresh_db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE ledger.events SET to_status = 'rejected' WHERE chain_key = %s AND kind = 'transition'",
            [seeded.reservation_sids[1]],
        )
    tampered = cli(env, "replay", "rebuild")
    assert tampered.exit_code == 1
    assert "altered" in tampered.stdout
    assert "does not verify" in tampered.output
    # Without the check, the rebuild shows what the altered rows would make of the projection.
    unchecked = cli(env, "replay", "rebuild", "--no-verify")
    assert unchecked.exit_code == 1
    assert seeded.reservation_sids[1] in unchecked.stdout
