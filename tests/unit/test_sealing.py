"""Dead letters keep no secret or PII in clear: sealing, masking, digests, and what redrive can read back."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.fernet import Fernet

from workers.broker.sealing import (
    LEFT_OUT_HEADER,
    SEALED_PREFIX,
    Unsealable,
    digest_only,
    keyring,
    seal_message,
    unseal_message,
)
from workers.config import Settings
from workers.core.redaction import mask_rejected
from workers.errors import ConfigurationError
from workers.replay.redrive import _dead_letter

PASSWORD = "sip-pw-never-in-clear"
MESSAGE: dict[str, Any] = {
    "schema": "reservation-action/v1",
    "action_id": "6f1c1c52-1f0e-4a43-9d39-0d1c5e0a0005",
    "action": "conference",
    "workspace_sid": "WS0123456789abcdef0123456789abcdef",
    "reservation_sid": "WR0123456789abcdef0123456789abcdef",
    "task_sid": "WT0123456789abcdef0123456789abcdef",
    "params": {"to": "+15550100001", "from_": "+15550100002", "sip_auth_password": PASSWORD, "timeout": 30},
}


def test_sensitive_parameters_are_sealed_and_unseal_with_the_key() -> None:
    keys = keyring(Fernet.generate_key().decode())
    sealed, left_out = seal_message(MESSAGE, keys)
    assert left_out == []
    text = json.dumps(sealed)
    for value in ("+15550100001", "+15550100002", PASSWORD):
        assert value not in text
    assert sealed["params"]["timeout"] == 30
    assert sealed["params"]["sip_auth_password"].startswith(SEALED_PREFIX)
    assert unseal_message(sealed, keys) == MESSAGE


def test_a_rotated_key_still_unseals_and_another_key_does_not() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed, _ = seal_message(MESSAGE, keyring(old))
    assert unseal_message(sealed, keyring(f"{new},{old}")) == MESSAGE
    with pytest.raises(Unsealable, match="another DEAD_LETTER_KEY"):
        unseal_message(sealed, keyring(new))
    with pytest.raises(Unsealable, match="not set here"):
        unseal_message(sealed, None)


def test_without_a_key_sensitive_parameters_are_left_out_and_redrive_says_so() -> None:
    kept, left_out = seal_message(MESSAGE, None)
    assert kept["params"] == {"timeout": 30}
    assert sorted(left_out) == ["from_", "sip_auth_password", "to"]
    message = SimpleNamespace(body=json.dumps(kept).encode(), headers={LEFT_OUT_HEADER: ",".join(left_out)})
    letter = _dead_letter(message)  # type: ignore[arg-type]
    assert letter.problem is not None
    assert "cannot be resent" in letter.problem


def test_redrive_reads_a_sealed_dead_letter_back_with_the_key_only() -> None:
    key = Fernet.generate_key().decode()
    sealed, _ = seal_message(MESSAGE, keyring(key))
    message = SimpleNamespace(body=json.dumps(sealed).encode(), headers={})
    assert _dead_letter(message, keyring(key)).body == MESSAGE  # type: ignore[arg-type]
    without = _dead_letter(message)  # type: ignore[arg-type]
    assert without.problem is not None
    assert "DEAD_LETTER_KEY" in without.problem


def test_a_refused_message_is_masked_or_reduced_to_a_digest() -> None:
    refused = {**MESSAGE, "SipAuthPassword": PASSWORD, "To": "+15550100003", "extra": {"x": 1}}
    masked = mask_rejected(refused)
    text = json.dumps(masked)
    for value in ("+15550100001", "+15550100003", PASSWORD):
        assert value not in text
    assert "SipAuthPassword" not in masked  # a secret-looking name is dropped
    assert masked["To"] == masked["extra"] == "[redacted]"
    assert masked["reservation_sid"] == MESSAGE["reservation_sid"]
    raw = json.dumps(refused).encode()
    kept = digest_only(raw, "text/plain")
    assert set(kept) == {"body_sha256", "body_bytes", "content_type"}
    assert PASSWORD not in json.dumps(kept)


def test_dead_letter_key_must_be_fernet_keys() -> None:
    key = Fernet.generate_key().decode()
    assert Settings.from_env({"DEAD_LETTER_KEY": f"{key}, {key}"}).dead_letter_key is not None
    assert Settings.from_env({}).dead_letter_key is None
    with pytest.raises(ConfigurationError, match="DEAD_LETTER_KEY"):
        Settings.from_env({"DEAD_LETTER_KEY": "not-a-key"})
    assert key not in repr(Settings.from_env({"DEAD_LETTER_KEY": key}))
