"""Redaction of reservation parameters before they are stored or logged.

The seeds mark some body parameters as PII (``To``, ``From``, ``CallTo``, ``CallFrom``,
``DequeueTo``, ``DequeueFrom``, ``SipAuthUsername``) and one as a secret
(``SipAuthPassword``). PII is kept only as a keyed hash, ``hmac-sha256:<hex>``, so that an
auditor who knows a value can still find it (:func:`pii_digest`) while a reader of the ledger
cannot recover it. Secrets are dropped entirely. Parameters the catalogue does not know (only
rejected inputs carry them) are hashed too, and dropped when their name looks like a secret's:
what we cannot classify we do not keep in clear.

Pure: no I/O. Resolving the key from the environment (and warning about the development key)
is the caller's job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from workers.core.parameters import BY_KEYWORD, BY_WIRE, Parameter

PII_PREFIX = "hmac-sha256:"
# Used when LEDGER_PII_KEY is unset: fine on a laptop, useless as protection in production.
DEVELOPMENT_PII_KEY = "reservations-development-pii-key-NOT-FOR-PRODUCTION"

# Unknown parameter names containing one of these are treated as secrets and dropped.
_SECRET_WORDS = ("password", "secret", "token", "credential")

_BY_LOWER_NAME: Mapping[str, Parameter] = {
    **{wire.lower(): p for wire, p in BY_WIRE.items()},
    **{keyword.lower(): p for keyword, p in BY_KEYWORD.items()},
}


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def pii_digest(value: object, key: str | bytes) -> str:
    """The keyed hash stored in place of a PII value; hash a known value with it to search.

    Strings are hashed as their UTF-8 bytes; anything else as its compact, key-sorted JSON.
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
    digest = hmac.new(_key_bytes(key), text.encode("utf-8"), hashlib.sha256).hexdigest()
    return PII_PREFIX + digest


def parameter_named(name: str) -> Parameter | None:
    """The catalogue entry for a keyword (``call_to``) or wire name (``CallTo``), any case."""
    return _BY_LOWER_NAME.get(name.lower())


def redact_params(params: Mapping[str, Any], key: str | bytes) -> dict[str, Any]:
    """A copy of ``params`` that is safe to store: secrets dropped, PII and unknowns hashed."""
    redacted: dict[str, Any] = {}
    for name, value in params.items():
        parameter = parameter_named(name)
        if parameter.secret if parameter is not None else _looks_secret(name):
            continue
        if parameter is None or parameter.pii:
            redacted[name] = pii_digest(value, key)
        else:
            redacted[name] = value
    return redacted


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


MASK = "[redacted]"


def mask_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` fit for logs and Flower: secrets dropped, PII and unknowns masked.

    Unlike :func:`redact_params` it needs no key, so any process (a producer, a worker) can
    show an action without being able to reveal, or even match, its PII.
    """
    masked: dict[str, Any] = {}
    for name, value in params.items():
        parameter = parameter_named(name)
        if parameter.secret if parameter is not None else _looks_secret(name):
            continue
        masked[name] = MASK if parameter is None or parameter.pii else value
    return masked


def mask_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """An action message with its ``params`` masked (see :func:`mask_params`)."""
    shown = dict(message)
    params = shown.get("params")
    if isinstance(params, Mapping):
        shown["params"] = mask_params(params)
    elif params is not None:
        shown["params"] = MASK
    return shown


def display_args(message: Mapping[str, Any]) -> str:
    """What Flower and the logs show of the apply task's arguments: PII masked, secrets gone."""
    return repr((mask_message(message),))


# The wire contract's fields that name an action and where it comes from: identifiers, names and
# the producer's own labels, none of them PII or secret (a rejected input keeps them in clear).
IDENTITY_FIELDS = frozenset(
    {
        "schema",
        "action_id",
        "action",
        "workspace_sid",
        "reservation_sid",
        "task_sid",
        "worker_sid",
        "correlation_id",
        "producer",
    }
)

# The wire contract's top-level fields other than ``params``: none of them PII or secret.
ENVELOPE_FIELDS = IDENTITY_FIELDS | {"expected_status", "not_after"}


def is_sensitive(name: str) -> bool:
    """A parameter that must not be kept in clear: a secret, PII, or one the catalogue does not know."""
    parameter = parameter_named(name)
    return parameter is None or parameter.secret or parameter.pii


def mask_rejected(message: Mapping[str, Any]) -> dict[str, Any]:
    """What a refused message may show in the dead-letter queue: the envelope's plain values, its
    ``params`` masked (:func:`mask_params`), and any other field masked (dropped if its name looks
    like a secret's). A refused message is never redriven, so nothing of it needs keeping."""
    shown: dict[str, Any] = {}
    for name, value in message.items():
        key = str(name)
        if key == "params":
            shown[key] = mask_params(value) if isinstance(value, Mapping) else MASK
        elif key in ENVELOPE_FIELDS:
            plain = value is None or isinstance(value, (str, int, float, bool))
            shown[key] = value if plain else MASK
        elif not _looks_secret(key):
            shown[key] = MASK
    return shown
