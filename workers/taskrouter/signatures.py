"""Is a webhook really from Twilio? ``X-Twilio-Signature``, checked by twilio's own
``RequestValidator`` (the one place of ours that sees it, beside the gateway).

Twilio signs the URL it requested: behind a proxy that is not the URL we see, so the URL is
rebuilt from ``EVENTS_PUBLIC_URL`` (the base Twilio is configured with) plus the request's path
and query. ``RequestValidator`` accepts the signature computed with and without the port
(``https://host/...`` and ``https://host:443/...``), as Twilio's own back ends differ.

* A form POST (Event Callbacks): HMAC over the URL and the sorted parameters.
* A JSON POST (Event Streams): the URL carries ``bodySHA256``, the SHA-256 of the body in hex, and
  the HMAC covers the URL alone; a JSON POST without ``bodySHA256`` is refused.
* ``X-Twilio-Webhooks-Signature-Settings: key=...,algorithm=HMAC_SHA256`` selects HMAC-SHA256
  (a SharedKey); without it, HMAC-SHA1 with the account's auth token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs

from twilio.request_validator import RequestValidator, get_signature_algorithm


class _Params(dict[str, list[str]]):
    """Form parameters with every value of a repeated name (``RequestValidator`` asks ``getlist``)."""

    def getlist(self, name: str) -> list[str]:
        return self[name]


class SignatureCheck:
    """Checks ``X-Twilio-Signature`` against ``public_url`` with ``auth_token``."""

    def __init__(self, auth_token: str, public_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self._base = public_url.rstrip("/")

    def url(self, path: str, query: str) -> str:
        """The URL Twilio requested, as it signed it."""
        return f"{self._base}{path}" + (f"?{query}" if query else "")

    def form(
        self,
        path: str,
        query: str,
        params: Mapping[str, Sequence[str]],
        signature: str | None,
        settings_header: str | None = None,
    ) -> bool:
        if not signature:
            return False
        values = _Params({name: list(found) for name, found in params.items()})
        algorithm = get_signature_algorithm(settings_header)
        return bool(self._validator.validate(self.url(path, query), values, signature, algorithm))

    def json(
        self, path: str, query: str, body: str, signature: str | None, settings_header: str | None = None
    ) -> bool:
        if not signature or "bodySHA256" not in parse_qs(query):
            return False
        algorithm = get_signature_algorithm(settings_header)
        return bool(self._validator.validate(self.url(path, query), body, signature, algorithm))
