"""The HTTP client under the twilio SDK: urllib3, through the SDK's own ``http_client`` hook.

twilio's default client sends every request through a ``requests.Session``, whose per-request
work (merging session settings, hooks, cookies, re-encoding the body, proxy lookups) is about a
tenth of a worker's CPU at full load; urllib3, which requests itself uses underneath, sends the
same request for much less (``ops/bench_workers.py``: about 12% more actions per second end to
end). Everything above it is still the twilio SDK: it builds the URLs, headers, bodies and
authentication, and parses the answers and the errors.

One client per thread (the gateway's rule), each with a small pool of keep-alive connections.
Proxies come from the environment as requests reads them (``HTTPS_PROXY``, ``NO_PROXY``...), once,
with the proxy's login if its URL has one; certificates are checked against certifi's bundle, as
requests does (``REQUESTS_CA_BUNDLE`` is not read).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlencode, urlsplit

import certifi
import urllib3
from requests.utils import get_environ_proxies
from twilio.http import HttpClient
from twilio.http.response import Response

from workers import tracing

if TYPE_CHECKING:
    from workers.taskrouter.governor import Governor

# twilio's HTTP client logs every request line at INFO; our own logs say what matters, without noise.
_logger = logging.getLogger("twilio.http_client")
_logger.setLevel(logging.WARNING)

JSON_CONTENT_TYPES = frozenset({"application/json", "application/scim+json"})
# Keep-alive connections per client: a client serves one thread, one request at a time.
POOL_SIZE = 2


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for ``url``, honouring ``NO_PROXY`` (None: go direct)."""
    proxies = get_environ_proxies(url)
    scheme = urlsplit(url).scheme
    return proxies.get(scheme) or proxies.get("all")


def _proxy_manager(proxy_url: str, options: dict[str, Any]) -> urllib3.ProxyManager:
    """A proxy that needs a login gets it as requests would send it (urllib3 ignores the URL's)."""
    credentials = urllib3.util.parse_url(proxy_url).auth
    headers = urllib3.make_headers(proxy_basic_auth=unquote(credentials)) if credentials else None
    return urllib3.ProxyManager(proxy_url, proxy_headers=headers, **options)


class Urllib3HttpClient(HttpClient):  # type: ignore[misc]  # twilio ships no types for it
    """A twilio ``HttpClient`` over urllib3 that keeps the last response, so that an error's
    ``Retry-After`` and request id can be read after the SDK raised.

    ``governor``: a slot of the account-wide budget is held while the request is on the wire,
    and only then (the SDK's building and parsing around it take no slot)."""

    def __init__(
        self, timeout: float, proxy_url: str | None = None, governor: Governor | None = None
    ) -> None:
        super().__init__(_logger, is_async=False, timeout=timeout)
        options: dict[str, Any] = {
            "maxsize": POOL_SIZE,
            "retries": False,  # an update is not idempotent: the applier decides what to retry
            "timeout": urllib3.Timeout(connect=timeout, read=timeout),
            "ca_certs": certifi.where(),
        }
        self._pool = _proxy_manager(proxy_url, options) if proxy_url else urllib3.PoolManager(**options)
        self.last_response: Response | None = None
        self._governor = governor

    def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, object] | None = None,
        data: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        """Send one request as twilio's own client would; transport errors are urllib3's."""
        self.last_response = None
        sent_headers = dict(headers or {})
        if auth is not None:
            sent_headers.update(urllib3.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        if params:
            url = f"{url}?{urlencode(params, doseq=True)}"
        body: str | None = None
        if data:
            json_body = sent_headers.get("Content-Type") in JSON_CONTENT_TYPES
            body = json.dumps(data) if json_body else urlencode(data, doseq=True)
        if self.logger.isEnabledFor(logging.INFO):
            self.log_request({"method": method, "url": url, "params": None, "headers": sent_headers})
        options: dict[str, Any] = {}
        if timeout is not None:  # urllib3 reads an explicit None as "wait forever"
            options["timeout"] = urllib3.Timeout(connect=timeout, read=timeout)
        # An HTTP client span (OpenTelemetry's conventions; the URL holds SIDs, never credentials),
        # whose context TaskRouter receives as traceparent, once the governor gave a slot. Nothing
        # when tracing is off.
        parts = urlsplit(url)
        governor = self._governor
        with (
            governor.slot() if governor is not None else contextlib.nullcontext(),
            tracing.client(
                method.upper(),
                {
                    "http.request.method": method.upper(),
                    "url.full": f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}",
                    "server.address": parts.hostname,
                    "server.port": parts.port,
                },
            ) as span,
        ):
            sent_headers.update(tracing.headers())
            answer = self._pool.request(
                method.upper(), url, body=body, headers=sent_headers, redirect=allow_redirects, **options
            )
            tracing.set_attributes(span, **{"http.response.status_code": answer.status})
        response = Response(answer.status, answer.data.decode("utf-8", "replace"), dict(answer.headers))
        if self.logger.isEnabledFor(logging.INFO):
            self.log_response(answer.status, response)
        self.last_response = response
        return response
