"""The project's one exception hierarchy.

Everything the package raises on purpose derives from :class:`ReservationsError`.
Driver and SDK errors are translated into these at the edges (ledger connector,
TaskRouter gateway) so that the rest of the code never inspects psycopg or HTTP.
Every class is picklable, because Celery serialises exceptions across processes.
"""

from __future__ import annotations


def unreachable(service: str, where: str, reason: str) -> str:
    """The one wording of every service out of reach (the ledger, RabbitMQ, TaskRouter), so that
    operators and their alerts recognise it whatever the command."""
    return f"cannot reach {service} at {where}: {reason}"


class ReservationsError(Exception):
    """Base class of every error this project raises on purpose."""

    @property
    def message(self) -> str:
        """What went wrong, in words: the first argument, unless a subclass says otherwise."""
        return str(self.args[0]) if self.args else (self.__doc__ or "").strip()

    def __str__(self) -> str:
        return self.message


class ConfigurationError(ReservationsError):
    """The environment or the command line asks for something we cannot run with."""


class InvalidParameter(ReservationsError):
    """A reservation update parameter breaks the catalogue (enum, pattern, range, type)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(parameter, message)
        self.parameter = parameter

    @property
    def message(self) -> str:
        return str(self.args[1])


class TransitionRefused(ReservationsError):
    """The reservation's current status makes the requested change impossible.

    ``message`` uses TaskRouter's own wording, so the emulator can return it verbatim.
    """


class TaskRouterError(ReservationsError):
    """TaskRouter answered with an error, or could not be reached.

    Raised only by the gateway, which is the one place that inspects twilio's exceptions and HTTP.
    ``status`` is the HTTP status (None when no response came back), ``code`` Twilio's error code,
    ``retry_after`` the server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, code, request_id, retry_after)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after


class PreconditionFailed(TaskRouterError):
    """HTTP 412: the reservation changed since the ETag we sent. Fetch again and re-plan."""


class PermanentTaskRouterError(TaskRouterError):
    """HTTP 400, 401, 403, 404 (and other 4xx): retrying the same request cannot help."""


class TransientTaskRouterError(TaskRouterError):
    """HTTP 5xx, a time-out or a dropped connection: retry later with backoff (honouring
    ``retry_after``). After a time-out or a dropped connection the update may have been applied:
    the ledger's intent tells the next run to find out before it sends again."""


class Throttled(TransientTaskRouterError):
    """HTTP 429: too many requests. Wait at least ``retry_after`` seconds."""


class SlotUnavailable(TransientTaskRouterError):
    """No slot of the account-wide TaskRouter budget came free in time: nothing was sent; retry later."""


class UnknownResource(ReservationsError):
    """The emulator has no such workspace, task, worker or reservation (TaskRouter's 404)."""


class ResourceConflict(ReservationsError):
    """The emulator's admin API was asked to create something that already exists differently."""


class UnsupportedMediaType(ReservationsError):
    """The emulator's admin API was sent a POST or DELETE that is not ``application/json``."""


class IfMatchMismatch(ReservationsError):
    """The emulator's store: an update's ``If-Match`` did not name the current version (HTTP 412).

    Not to be confused with :class:`PreconditionFailed`, which the gateway raises when TaskRouter
    answers 412.
    """

    def __init__(self, sid: str, if_match: str, current: str) -> None:
        super().__init__(sid, if_match, current)
        self.sid = sid
        self.if_match = if_match
        self.current = current

    @property
    def message(self) -> str:
        return f"Reservation {self.sid}: If-Match {self.if_match!r} does not match the current ETag"


class LedgerError(ReservationsError):
    """The ledger could not do what was asked of it."""


class LedgerUnavailable(LedgerError):
    """The ledger's database cannot be reached, or refused the connection."""


class BrokerUnavailable(ReservationsError):
    """RabbitMQ cannot be reached, refused our credentials or virtual host, or lacks our topology."""


class ReservationBusy(LedgerError):
    """Another worker held the reservation's lock for longer than we were willing to wait."""


class AppendOnlyViolation(LedgerError):
    """The ledger is append-only: an UPDATE, DELETE or TRUNCATE of its rows was refused."""


class LedgerPermissionDenied(LedgerError):
    """The ledger's database role may not do this (the writer only inserts and selects)."""


class UnknownAction(LedgerError):
    """No action with this ``action_id`` was ever recorded as received."""

    def __init__(self, action_id: str) -> None:
        super().__init__(action_id)
        self.action_id = action_id

    @property
    def message(self) -> str:
        return f"no action {self.action_id} was recorded as received"


class MigrationError(LedgerError):
    """The database's migrations cannot be reconciled with the ones this code ships."""


class VerificationError(LedgerError):
    """The ledger (or an archive of it) cannot be verified as asked: an unknown checkpoint, one
    without a horizon, an archive that cannot be read."""


class InvalidEvent(ReservationsError):
    """A TaskRouter event (a callback, an Event Streams delivery, an item of the Events resource)
    that cannot be read as one: no type, an unknown reservation event, no reservation SID."""


class EventRefused(ReservationsError):
    """An event delivery whose signature or credentials do not hold: answered 403, nothing recorded."""
