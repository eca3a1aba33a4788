"""What a dead letter may carry: sensitive parameters sealed, refused messages masked.

``reservations.dead`` keeps the whole message of a ``failed`` or ``dead_lettered`` action so that
an operator can redrive it (the ledger keeps PII only as keyed hashes). Its sensitive parameters
(secrets such as ``sip_auth_password``, PII such as ``to`` and ``call_to``: the catalogue's
``secret`` and ``pii`` marks) are **sealed** with Fernet under ``DEAD_LETTER_KEY``: the value
becomes ``"fernet:<token>"`` (the token encrypts the value's JSON). Without a key they are **left
out**, and the dead letter names them in the ``x-reservations-left-out`` header: redrive then
explains that it cannot resend the action.

``DEAD_LETTER_KEY`` is one Fernet key (``Fernet.generate_key()``), or several separated by commas
for a rotation: the first seals, any of them unseals.

A refused message (``rejected_input``) is never redriven, so nothing of it is kept in clear: a
JSON object is masked (:func:`~workers.core.redaction.mask_rejected`), anything else is reduced to
its size and SHA-256 (:func:`digest_only`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from workers.core.redaction import is_sensitive, mask_rejected

SEALED_PREFIX = "fernet:"
# Names of the sensitive parameters a dead letter left out (no DEAD_LETTER_KEY), comma-separated.
LEFT_OUT_HEADER = "x-reservations-left-out"
# How a dead letter's body relates to the message: "sealed", "masked" or "digest".
BODY_HEADER = "x-reservations-body"


class Unsealable(Exception):
    """A dead letter whose sealed parameters cannot be read back (no key, or another key)."""


def keyring(key: str | None) -> MultiFernet | None:
    """The Fernet keys of ``DEAD_LETTER_KEY`` (first seals, any unseals), or None when unset.

    Raises ``ValueError`` for a key that is not a Fernet key.
    """
    if not key:
        return None
    keys = [part.strip() for part in key.split(",") if part.strip()]
    return MultiFernet([Fernet(part.encode("ascii")) for part in keys])


def seal_message(message: Mapping[str, Any], keys: MultiFernet | None) -> tuple[dict[str, Any], list[str]]:
    """A copy of an action message with its sensitive parameters sealed (or, without keys, left
    out), and the names of those left out."""
    params = message.get("params")
    if not isinstance(params, Mapping):
        return dict(message), []
    sealed: dict[str, Any] = {}
    left_out: list[str] = []
    for name, value in params.items():
        if not is_sensitive(name):
            sealed[name] = value
        elif keys is None:
            left_out.append(name)
        else:
            token = keys.encrypt(json.dumps(value, separators=(",", ":")).encode("utf-8"))
            sealed[name] = SEALED_PREFIX + token.decode("ascii")
    return {**message, "params": sealed}, left_out


def sealed_names(message: Mapping[str, Any]) -> list[str]:
    params = message.get("params")
    if not isinstance(params, Mapping):
        return []
    return [
        name for name, value in params.items() if isinstance(value, str) and value.startswith(SEALED_PREFIX)
    ]


def unseal_message(message: Mapping[str, Any], keys: MultiFernet | None) -> dict[str, Any]:
    """The action message back, its sealed parameters decrypted; raises :class:`Unsealable`."""
    names = sealed_names(message)
    if not names:
        return dict(message)
    listed = ", ".join(names)
    if keys is None:
        raise Unsealable(
            f"its sensitive parameters ({listed}) are sealed with the workers' DEAD_LETTER_KEY,"
            " which is not set here: set it to redrive"
        )
    params = dict(message["params"])
    for name in names:
        try:
            params[name] = json.loads(keys.decrypt(params[name][len(SEALED_PREFIX) :].encode("ascii")))
        except (InvalidToken, ValueError, UnicodeError):
            raise Unsealable(
                f"its sensitive parameters ({listed}) were sealed with another DEAD_LETTER_KEY"
                " (rotated out? list the old key after the new one, comma-separated)"
            ) from None
    return {**message, "params": params}


def digest_only(body: bytes, content_type: str | None) -> dict[str, Any]:
    """What is kept of a refused body that is not a JSON object: its size and SHA-256, never its bytes."""
    return {
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_bytes": len(body),
        "content_type": (content_type or "")[:100],
    }


# What a dead letter keeps of a message: its body, and the headers that say how it relates.
Kept = tuple[dict[str, Any], dict[str, str]]


def kept_of_action(message: Mapping[str, Any], keys: MultiFernet | None) -> Kept:
    """What a dead letter keeps of an action's message, to redrive it: its sensitive parameters
    sealed (or left out, and named), with the headers that say so."""
    kept, left_out = seal_message(message, keys)
    headers = {BODY_HEADER: "sealed"}
    if left_out:
        headers[LEFT_OUT_HEADER] = ",".join(left_out)
    return kept, headers


def kept_of_refused(
    parsed: Mapping[str, Any] | None, body: bytes = b"", content_type: str | None = None
) -> Kept:
    """What a dead letter keeps of a refused message (never redriven): the object masked, or,
    when it was no JSON object, only the body's size and digest."""
    if parsed is not None:
        return mask_rejected(parsed), {BODY_HEADER: "masked"}
    return digest_only(body, content_type), {BODY_HEADER: "digest"}


def raw_body(message: Any) -> bytes:
    """A kombu message's body as it came, in bytes (transports other than py-amqp may hand text)."""
    body = message.body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return bytes(body or b"")
