"""How an emulator instance is configured, and the basic-auth check that follows from it."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from workers.config import TwilioCredentials
from workers.core.sids import is_sid
from workers.errors import ConfigurationError, InvalidParameter
from workers.testing.emulator.events import ConnectionOverrides
from workers.testing.emulator.store import DEFAULT_LOG_SIZE

# The emulator's well-known local credentials; never valid against the real Twilio. The product has
# no default credentials: the demo, the tests and the benchmarks pass these to it explicitly.
EMULATOR_ACCOUNT_SID = "AC" + "0" * 32
EMULATOR_AUTH_TOKEN = "emulator-auth-token"  # noqa: S105 - public, emulator only
EMULATOR_CREDENTIALS = TwilioCredentials(EMULATOR_ACCOUNT_SID, EMULATOR_ACCOUNT_SID, EMULATOR_AUTH_TOKEN)


def emulator_env(base_url: str) -> dict[str, str]:
    """The environment that points the workers at an emulator, with its credentials."""
    return {
        "TASKROUTER_BASE_URL": base_url,
        "TWILIO_ACCOUNT_SID": EMULATOR_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": EMULATOR_AUTH_TOKEN,
    }


@dataclass(frozen=True, slots=True)
class EmulatorSettings:
    """One emulator's identity and behaviour.

    ``strict_headers`` reproduces the ETag header spellings of Twilio's OpenAPI spec instead of
    sending ``ETag`` on every reservation response (see ``wire.etag_headers``).

    Events: ``event_callback_url`` and ``events_filter`` are every new workspace's
    ``EventCallbackUrl`` and ``EventsFilter`` (each workspace can change its own);
    ``event_streams_url`` is an Event Streams webhook sink; ``reservation_timeout`` times a
    pending reservation out after that many seconds (None: never, unless asked);
    ``callback_concurrency`` and ``callback_queue_size`` bound the background sender.
    """

    account_sid: str = EMULATOR_ACCOUNT_SID
    auth_token: str = field(default=EMULATOR_AUTH_TOKEN, repr=False)
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    strict_headers: bool = False
    access_log: bool = False
    log_size: int = DEFAULT_LOG_SIZE
    event_callback_url: str | None = None
    events_filter: tuple[str, ...] | None = None
    event_streams_url: str | None = None
    reservation_timeout: float | None = None
    callback_concurrency: int = 8
    callback_queue_size: int = 10_000
    # The account's concurrency limit (None: none) and the Retry-After of its 429s (None: none).
    concurrency_limit: int | None = None
    concurrency_retry_after: int | None = None

    def __post_init__(self) -> None:
        if not is_sid(self.account_sid, "AC"):
            raise ConfigurationError(f"The account SID {self.account_sid!r} must match ^AC[0-9a-fA-F]{{32}}$")
        if (self.api_key is None) != (self.api_secret is None):
            raise ConfigurationError("An API key and its secret must be given together")
        if self.log_size < 1:
            raise ConfigurationError("The transition log must keep at least one entry")
        for name in ("event_callback_url", "event_streams_url"):
            url = getattr(self, name)
            if url is not None and not is_callback_url(url):
                raise ConfigurationError(
                    f"The {name} {url!r} must be an absolute http(s) URL, its connection overrides valid"
                )
        if self.reservation_timeout is not None and self.reservation_timeout <= 0:
            raise ConfigurationError("The reservation timeout must be positive")
        if self.callback_concurrency < 1 or self.callback_queue_size < 1:
            raise ConfigurationError("The callback sender needs a concurrency and a queue size of at least 1")
        if self.concurrency_limit is not None and self.concurrency_limit < 1:
            raise ConfigurationError("The concurrency limit must be at least 1 request in flight")

    def credentials(self) -> list[tuple[str, str]]:
        """The (username, password) pairs basic auth accepts."""
        pairs = [(self.account_sid, self.auth_token)]
        if self.api_key is not None and self.api_secret is not None:
            pairs.append((self.api_key, self.api_secret))
        return pairs


def is_callback_url(url: str) -> bool:
    """An absolute http(s) URL, as Twilio requires of a callback URL, with valid connection overrides."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    try:
        ConnectionOverrides.of(url)
    except InvalidParameter:
        return False
    return True


def parse_events_filter(value: str | None) -> tuple[str, ...] | None:
    """Twilio's ``EventsFilter`` (comma-separated event types); None or blank means every event."""
    if value is None:
        return None
    types = tuple(part.strip() for part in value.split(",") if part.strip())
    return types or None


class BasicAuth:
    """Checks an ``Authorization`` header; the exact headers the SDK sends are precomputed."""

    def __init__(self, credentials: list[tuple[str, str]]) -> None:
        self._pairs = frozenset(credentials)
        self._headers = frozenset(
            "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            for user, password in credentials
        )

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        if header in self._headers:
            return True
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and (user, password) in self._pairs
