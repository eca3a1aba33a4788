"""TaskRouter's wire format: resource JSON, the list envelope, error bodies and ETag headers.

What the seeds show and what the twilio SDK parses. Pure functions, no aiohttp: the HTTP layer
feeds them the request's base URL (its own scheme and host) and sends what they return.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
import secrets
from collections.abc import Sequence
from urllib.parse import urlencode

from workers.core.parameters import Scope
from workers.testing.emulator.model import Reservation

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REQUEST_ID_HEADER = "Twilio-Request-Id"

_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    """``RQ`` and 32 hex digits, unique within this process, cheaper than 16 random bytes."""
    return f"RQ{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"


class Operation(enum.StrEnum):
    FETCH = "fetch"
    UPDATE = "update"
    LIST = "list"


# Which header carries the ETag. Default: ``ETag`` everywhere. Strict: as Twilio's OpenAPI spec
# declares it, ``ETag`` on the task-scoped fetch and on lists, ``Etag`` on the task-scoped
# update, and nothing on the worker-scoped fetch and update.
_DEFAULT_ETAG_HEADERS: dict[tuple[Scope, Operation], str | None] = {
    (scope, operation): "ETag" for scope in Scope for operation in Operation
}
_STRICT_ETAG_HEADERS: dict[tuple[Scope, Operation], str | None] = {
    (Scope.TASK, Operation.FETCH): "ETag",
    (Scope.TASK, Operation.UPDATE): "Etag",
    (Scope.TASK, Operation.LIST): "ETag",
    (Scope.WORKER, Operation.FETCH): None,
    (Scope.WORKER, Operation.UPDATE): None,
    (Scope.WORKER, Operation.LIST): "ETag",
}


def etag_headers(strict: bool) -> dict[tuple[Scope, Operation], str | None]:
    return dict(_STRICT_ETAG_HEADERS if strict else _DEFAULT_ETAG_HEADERS)


def parse_if_match(header: str) -> frozenset[str]:
    """The ETags an ``If-Match`` header accepts, quoted or not, weak (``W/``) or not; ``*`` is any."""
    tags = set()
    for part in header.split(","):
        tag = part.strip()
        if tag[:2] in ("W/", "w/"):
            tag = tag[2:].strip()
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        if tag:
            tags.add(tag)
    return frozenset(tags)


def list_etag(reservations: Sequence[Reservation]) -> str:
    """A list's ETag: changes whenever any listed reservation (or the set of them) changes."""
    digest = hashlib.blake2b(digest_size=8)
    for reservation in reservations:
        digest.update(f"{reservation.sid}:{reservation.version};".encode())
    return digest.hexdigest()


def workspace_url(base: str, workspace_sid: str) -> str:
    return f"{base}/v1/Workspaces/{workspace_sid}"


def reservation_path(scope: Scope, reservation: Reservation) -> str:
    parent = f"Tasks/{reservation.task_sid}" if scope is Scope.TASK else f"Workers/{reservation.worker_sid}"
    return f"/v1/Workspaces/{reservation.workspace_sid}/{parent}/Reservations/{reservation.sid}"


def representation(reservation: Reservation, scope: Scope, base: str, account_sid: str) -> dict[str, object]:
    """The resource JSON of seeds 000 and 001 (``attention`` on the worker-scoped one only)."""
    workspace = f"{base}/v1/Workspaces/{reservation.workspace_sid}"
    body: dict[str, object] = {
        "account_sid": account_sid,
        "date_created": reservation.date_created,
        "date_updated": reservation.date_updated,
        "links": {
            "task": f"{workspace}/Tasks/{reservation.task_sid}",
            "worker": f"{workspace}/Workers/{reservation.worker_sid}",
            "workspace": workspace,
        },
        "reservation_status": reservation.status.value,
        "sid": reservation.sid,
        "task_sid": reservation.task_sid,
        "url": base + reservation_path(scope, reservation),
        "worker_name": reservation.worker_name,
        "worker_sid": reservation.worker_sid,
        "workspace_sid": reservation.workspace_sid,
    }
    if scope is Scope.WORKER:
        body["attention"] = 0
    return body


def list_envelope(
    items: list[dict[str, object]], list_url: str, filters: dict[str, str], page_size: int
) -> dict[str, object]:
    """Twilio's list page. The resource has no pagination (seed 003): one page holds everything."""
    query = urlencode({**filters, "PageSize": page_size, "Page": 0})
    page_url = f"{list_url}?{query}"
    return {
        "reservations": items,
        "meta": {
            "page": 0,
            "page_size": page_size,
            "first_page_url": page_url,
            "previous_page_url": None,
            "url": page_url,
            "next_page_url": None,
            "key": "reservations",
        },
    }


def error_body(status: int, code: int, message: str, detail: str | None = None) -> bytes:
    """Twilio's error shape, which the SDK turns into ``TwilioRestException(status, code)``."""
    body: dict[str, object] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    return encode(body)


def encode(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
