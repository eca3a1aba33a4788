"""Digests kept outside the database catch what verify alone cannot: a superuser who rewrites a
whole chain, its head, the checkpoints' heads and every checkpoint digest."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from tests.ledger.conftest import accept_applied, make_action, seal, superuser
from workers.cli import main
from workers.ledger import digests
from workers.ledger.models import Checkpoint
from workers.ledger.writer import PostgresLedgerWriter

pytestmark = pytest.mark.integration

REWRITE = """
DO $$
DECLARE
    r record;
    prev bytea := decode(repeat('00', 32), 'hex');
    c record;
    pd bytea := decode(repeat('00', 32), 'hex');
BEGIN
    UPDATE ledger.events SET http_status = 599 WHERE chain_key = {chain} AND chain_seq = 2;
    FOR r IN SELECT position FROM ledger.events WHERE chain_key = {chain} ORDER BY chain_seq LOOP
        UPDATE ledger.events SET prev_hash = prev WHERE position = r.position;
        UPDATE ledger.events e SET row_hash = ledger.event_hash(e) WHERE position = r.position
            RETURNING row_hash INTO prev;
    END LOOP;
    UPDATE ledger.chain_heads SET head_hash = prev WHERE chain_key = {chain};
    UPDATE ledger.checkpoint_heads h SET head_hash = e.row_hash
      FROM ledger.events e WHERE e.chain_key = h.chain_key AND e.chain_seq = h.chain_seq;
    FOR c IN SELECT * FROM ledger.checkpoints ORDER BY checkpoint_id LOOP
        UPDATE ledger.checkpoints k SET prev_digest = pd, digest = ledger.checkpoint_digest(
            pd, k.checkpoint_id, k.max_position,
            (SELECT coalesce(array_agg(h.chain_key ORDER BY h.chain_key), '{{}}')
               FROM ledger.checkpoint_heads h WHERE h.checkpoint_id = k.checkpoint_id),
            (SELECT coalesce(array_agg(h.chain_seq ORDER BY h.chain_key), '{{}}')
               FROM ledger.checkpoint_heads h WHERE h.checkpoint_id = k.checkpoint_id),
            (SELECT coalesce(array_agg(encode(h.head_hash, 'hex') ORDER BY h.chain_key), '{{}}')
               FROM ledger.checkpoint_heads h WHERE h.checkpoint_id = k.checkpoint_id))
         WHERE k.checkpoint_id = c.checkpoint_id
        RETURNING digest INTO pd;
    END LOOP;
END
$$
"""


def _fill(ledger: PostgresLedgerWriter) -> str:
    action = make_action()
    accept_applied(ledger, action, with_attempt=True)
    return action.reservation_sid


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _pem(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def test_a_superusers_whole_chain_rewrite_is_caught_by_the_signed_digests(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    runner = CliRunner()
    noted = tmp_path / "digests.jsonl"
    env = {"LEDGER_SIGNING_KEY": _pem(key)}
    victim = _fill(fresh_writer)
    _fill(fresh_writer)
    for _ in range(2):
        sealed = runner.invoke(
            main, ["ledger", "checkpoint", "--database-url", fresh_db_url, "--digests", str(noted)], env=env
        )
        assert sealed.exit_code == 0, sealed.output
        assert "(signed)" in sealed.output
        _fill(fresh_writer)
    lines = [json.loads(line) for line in noted.read_text().splitlines()]
    assert [(r["v"], r["checkpoint_id"]) for r in lines] == [(1, 1), (1, 2)]
    assert all(r["signature"] and r["key_id"] == digests.key_id(key.public_key()) for r in lines)

    verify = ["ledger", "verify", "--database-url", fresh_db_url]
    against = [*verify, "--digests", str(noted), "--public-key", _public_b64(key)]
    intact = runner.invoke(main, against, env={"LEDGER_SIGNING_KEY": ""})
    assert intact.exit_code == 0, intact.output
    assert "every digest noted" in intact.output

    with superuser(fresh_db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql.SQL(REWRITE).format(chain=sql.Literal(victim)))
        assert conn.execute(
            "SELECT http_status FROM ledger.events WHERE chain_key = %s AND chain_seq = 2", [victim]
        ).fetchone() == (599,)

    plain = runner.invoke(main, verify)
    assert plain.exit_code == 0, plain.output  # the rewrite is consistent: verify alone cannot tell
    caught = runner.invoke(main, against, env={"LEDGER_SIGNING_KEY": ""})
    assert caught.exit_code == 1, caught.output
    assert "checkpoint 1 has digest" in caught.output
    assert "expected " + lines[0]["digest"] in caught.output
    assert "does not match the digests noted" in caught.output


def test_a_changed_digest_line_fails_its_signature(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    _fill(fresh_writer)
    sealed = seal(fresh_db_url)
    record = digests.record_for(sealed, key)
    forged = digests.record_for(Checkpoint(sealed.checkpoint_id, 0, 0, b"\x01" * 32), None)
    spliced = digests.DigestRecord(
        **{**json.loads(forged.to_json()), "key_id": record.key_id, "signature": record.signature}
    )
    noted = tmp_path / "digests.jsonl"
    noted.write_text(spliced.to_json() + "\n")
    runner = CliRunner()
    base = ["ledger", "verify", "--database-url", fresh_db_url, "--digests", str(noted)]
    result = runner.invoke(main, [*base, "--public-key", _public_b64(key)], env={"LEDGER_SIGNING_KEY": ""})
    assert result.exit_code == 1
    assert "the signature does not hold" in result.output
    unkeyed = runner.invoke(main, base, env={"LEDGER_SIGNING_KEY": ""})
    assert unkeyed.exit_code == 2
    assert "give --public-key" in unkeyed.output


def test_unsigned_digests_to_stdout_and_keys_in_base64(
    fresh_db_url: str, fresh_writer: PostgresLedgerWriter
) -> None:
    _fill(fresh_writer)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["ledger", "checkpoint", "--database-url", fresh_db_url, "--digests", "-"],
        env={"LEDGER_SIGNING_KEY": ""},
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.splitlines()[-1])
    assert record["signature"] is None
    assert record["checkpoint_id"] == 1
    raw = Ed25519PrivateKey.generate()
    b64 = base64.b64encode(
        raw.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    ).decode()
    assert digests.key_id(digests.load_private_key(b64).public_key()) == digests.key_id(raw.public_key())
