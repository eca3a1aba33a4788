"""External anchoring: checkpoint digests noted outside the database, signed with Ed25519.

A digest file holds one JSON object per line (ops/LEDGER.md, "Digests kept outside")::

    {"v": 1, "checkpoint_id": 7, "max_position": 1234, "chains": 12, "digest": "<hex>",
     "noted_at": "2026-01-02T03:04:05.123456+00:00", "key_id": "<16 hex>", "signature": "<base64>"}

``signature`` is Ed25519 over :func:`signed_bytes` (every other field, canonical JSON, after a
fixed prefix); ``key_id`` is the first 16 hex digits of SHA-256 of the raw public key. Both are
null when no signing key was set. ``reservations ledger verify --digests FILE`` checks each
signature and that each checkpoint still has the noted digest, which a superuser who rewrote
whole chains, their heads and the checkpoints cannot arrange without the private key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from workers.errors import ConfigurationError
from workers.ledger.models import Checkpoint

K = TypeVar("K", Ed25519PrivateKey, Ed25519PublicKey)

FORMAT_VERSION = 1
_PREFIX = b"reservations-ledger-digest\n"


@dataclass(frozen=True, slots=True)
class DigestRecord:
    v: int
    checkpoint_id: int
    max_position: int
    chains: int
    digest: str
    noted_at: str
    key_id: str | None = None
    signature: str | None = None
    line: int = field(default=0, compare=False)

    def to_json(self) -> str:
        fields = asdict(self)
        del fields["line"]
        return json.dumps(fields, separators=(",", ":"))


def signed_bytes(record: DigestRecord) -> bytes:
    """What the signature covers: the prefix, then every field but the signature, canonical JSON."""
    fields = asdict(record)
    del fields["line"], fields["signature"]
    return _PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _decode_b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{what} is neither PEM nor base64") from None


def load_private_key(text: str) -> Ed25519PrivateKey:
    """LEDGER_SIGNING_KEY: a PEM (PKCS#8) Ed25519 private key, or its 32 raw bytes in base64."""
    return _load_key(
        text,
        lambda pem: serialization.load_pem_private_key(pem, password=None),
        Ed25519PrivateKey,
        Ed25519PrivateKey.from_private_bytes,
        not_ed25519="LEDGER_SIGNING_KEY is not an Ed25519 private key",
        what="LEDGER_SIGNING_KEY",
        not_32_bytes="LEDGER_SIGNING_KEY in base64 must be 32 raw bytes",
    )


def load_public_key(text: str) -> Ed25519PublicKey:
    """A PEM (SubjectPublicKeyInfo) Ed25519 public key, its 32 raw bytes in base64, or a file
    holding either."""
    if "-----BEGIN" not in text and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    return _load_key(
        text,
        serialization.load_pem_public_key,
        Ed25519PublicKey,
        Ed25519PublicKey.from_public_bytes,
        not_ed25519="the public key is not an Ed25519 key",
        what="the public key",
        not_32_bytes="an Ed25519 public key in base64 must be 32 raw bytes",
    )


def _load_key(
    text: str,
    from_pem: Callable[[bytes], object],
    kind: type,
    from_raw: Callable[[bytes], K],
    *,
    not_ed25519: str,
    what: str,
    not_32_bytes: str,
) -> K:
    """An Ed25519 key of ``kind`` from PEM, or from its 32 raw bytes in base64."""
    if "-----BEGIN" in text:
        key = from_pem(text.encode())
        if not isinstance(key, kind):
            raise ConfigurationError(not_ed25519)
        return cast(K, key)
    raw = _decode_b64(text, what)
    if len(raw) != 32:
        raise ConfigurationError(not_32_bytes)
    return from_raw(raw)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def record_for(
    checkpoint: Checkpoint, key: Ed25519PrivateKey | None, now: datetime | None = None
) -> DigestRecord:
    """The line to note for ``checkpoint``, signed when a key is given."""
    unsigned = DigestRecord(
        FORMAT_VERSION,
        checkpoint.checkpoint_id,
        checkpoint.max_position,
        checkpoint.chains,
        checkpoint.digest.hex(),
        (now or datetime.now(UTC)).isoformat(),
        key_id(key.public_key()) if key is not None else None,
    )
    if key is None:
        return unsigned
    signature = base64.b64encode(key.sign(signed_bytes(unsigned))).decode()
    return DigestRecord(**{**asdict(unsigned), "signature": signature})


def parse(lines: Iterable[str]) -> list[DigestRecord]:
    """The records of a digest file; ValueError naming the line for anything malformed."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields: dict[str, Any] = json.loads(line)
            if fields.get("v") != FORMAT_VERSION:
                raise ValueError(f"unknown format version {fields.get('v')!r}")
            record = DigestRecord(**fields, line=number)
            bytes.fromhex(record.digest)
            if not isinstance(record.checkpoint_id, int):
                raise ValueError("checkpoint_id is not an integer")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"digest file line {number}: {exc}") from None
        records.append(record)
    return records


def signature_problems(records: Iterable[DigestRecord], public: Ed25519PublicKey | None) -> list[str]:
    """Each record whose signature does not hold (or is missing, when a key is given)."""
    problems = []
    expected_id = key_id(public) if public is not None else None
    for record in records:
        where = f"digest file line {record.line} (checkpoint {record.checkpoint_id})"
        if record.signature is None:
            if public is not None:
                problems.append(f"{where} is not signed")
            continue
        if public is None:
            problems.append(f"{where} is signed, but no public key was given to check it")
            continue
        if record.key_id != expected_id:
            problems.append(f"{where} was signed by key {record.key_id}, not {expected_id}")
            continue
        try:
            public.verify(base64.b64decode(record.signature), signed_bytes(record))
        except (InvalidSignature, binascii.Error, ValueError):
            problems.append(f"{where}: the signature does not hold (the line was changed or forged)")
    return problems
