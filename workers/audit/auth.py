"""Who may read the audit API and console: named auditor tokens, their session cookies, and the
refusal of credentials in URLs. Pure: no I/O; the time is passed in.

* ``AUDIT_API_TOKENS="alice:<token>,bob:<token>"`` (or a file of ``name:token`` lines) names each
  auditor, so that every request is logged with who made it; ``AUDIT_API_TOKEN`` stays one
  token, logged under that name.
* A browser logs in once with its token; the cookie then holds the auditor's name, an expiry and
  an HMAC keyed by that auditor's token, never the token itself. Removing a token from the
  configuration ends its sessions; so does the expiry.
* A token in a URL ends up in proxy logs, browser history and ``Referer`` headers: such a request
  is refused before anything else reads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from workers.errors import ConfigurationError

# The name AUDIT_API_TOKEN's requests are logged under.
UNNAMED = "AUDIT_API_TOKEN"
SESSION_COOKIE = "audit_session"
SESSION_SECONDS = 8 * 3600
MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Query parameters that carry credentials, whatever their value.
CREDENTIAL_PARAMETERS = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "auth", "authorization", "bearer", "password"}
)


@dataclass(frozen=True, slots=True)
class Auditor:
    """One auditor: the name the logs show, and the token that proves it."""

    name: str
    token: str = field(repr=False)


def parse_auditors(text: str, *, origin: str) -> tuple[Auditor, ...]:
    """``name:token`` entries, separated by commas or new lines (``#`` starts a comment line).

    ``origin`` names where they came from, for the error message (never the token).
    """
    found: list[Auditor] = []
    entries = (part.strip() for line in text.splitlines() for part in line.split(","))
    for number, entry in enumerate((e for e in entries if e and not e.startswith("#")), 1):
        name, colon, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        if not colon or not _NAME.match(name):
            raise ConfigurationError(
                f"{origin}: entry {number} must be name:token, the name of letters, digits and . _ @ -"
            )
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"{origin}: the token of {name} is shorter than {MIN_TOKEN_LENGTH} characters"
            )
        found.append(Auditor(name, token))
    return tuple(found)


def auditors(*, token: str | None = None, named: Iterable[Auditor] = ()) -> tuple[Auditor, ...]:
    """The named auditors and, when set, AUDIT_API_TOKEN as one more; names and tokens unique."""
    every = [*named, *([Auditor(UNNAMED, token)] if token else [])]
    names = [a.name for a in every]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigurationError(f"audit tokens: the name {duplicated[0]} is given twice")
    if len({a.token for a in every}) != len(every):
        raise ConfigurationError("audit tokens: two auditors share one token; give each its own")
    return tuple(every)


def identify(given: str, known: Iterable[Auditor]) -> Auditor | None:
    """The auditor whose token is ``given`` (every token compared in constant time), or None."""
    found = None
    encoded = given.encode("utf-8")
    for auditor in known:
        if hmac.compare_digest(encoded, auditor.token.encode("utf-8")):
            found = auditor
    return found


def _mac(auditor: Auditor, payload: str) -> str:
    # A key of its own per auditor, derived from the token, so that the cookie never holds it.
    key = hashlib.sha256(b"audit-session\x00" + auditor.token.encode("utf-8")).digest()
    digest = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def session_cookie(auditor: Auditor, now: float, lifetime: int = SESSION_SECONDS) -> str:
    """The cookie value of a session of ``auditor`` that ends ``lifetime`` seconds after ``now``."""
    name = base64.urlsafe_b64encode(auditor.name.encode("utf-8")).decode("ascii").rstrip("=")
    payload = f"{name}.{int(now) + lifetime}"
    return f"{payload}.{_mac(auditor, payload)}"


def session_auditor(cookie: str, known: Iterable[Auditor], now: float) -> Auditor | None:
    """The auditor of a session cookie still valid at ``now``, or None (forged, expired, revoked)."""
    parts = cookie.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    encoded_name, expires, mac = parts
    try:
        name = base64.urlsafe_b64decode(encoded_name + "=" * (-len(encoded_name) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    auditor = next((a for a in known if a.name == name), None)
    if auditor is None or int(expires) <= now:
        return None
    expected = _mac(auditor, f"{encoded_name}.{expires}")
    return auditor if hmac.compare_digest(mac.encode("ascii"), expected.encode("ascii")) else None


def credentials_in_url(
    path: str, query: Mapping[str, str] | Iterable[tuple[str, str]], known: Iterable[Auditor]
) -> bool:
    """Whether a URL carries a credential: a parameter named like one, or any auditor's token."""
    pairs = list(query.items()) if isinstance(query, Mapping) else list(query)
    if any(name.lower() in CREDENTIAL_PARAMETERS for name, _ in pairs):
        return True
    tokens = [a.token for a in known]
    return any(token in text for token in tokens for text in (path, *(value for _, value in pairs)))
