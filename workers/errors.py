"""The project's one exception hierarchy.

Everything the package raises on purpose derives from :class:`ReservationsError`.
Driver and SDK errors are translated into these at the edges (ledger connector,
TaskRouter gateway) so that the rest of the code never inspects psycopg or HTTP.
Every class is picklable, because Celery serialises exceptions across processes.
"""

from __future__ import annotations


class ReservationsError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigurationError(ReservationsError):
    """The environment or the command line asks for something we cannot run with."""


class InvalidParameter(ReservationsError):
    """A reservation update parameter breaks the catalogue (enum, pattern, range, type)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(parameter, message)
        self.parameter = parameter
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransitionRefused(ReservationsError):
    """The reservation's current status makes the requested change impossible.

    ``message`` uses TaskRouter's own wording, so the emulator can return it verbatim.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
