"""Structured logs: one JSON object per line, with the ledger's words for the fields.

``LOG_FORMAT`` chooses: ``json``, ``text`` (Celery's own format), or ``auto`` (the default): JSON
when stderr is not a terminal (a container, a supervisor, a log file), text on a terminal. The
worker applies it through Celery's ``after_setup_logger`` and ``after_setup_task_logger`` signals,
so Celery still chooses the handlers (stderr or ``--logfile``) and its own level (``--loglevel``,
WARNING unless given); our loggers (``workers.*``) log at ``LOG_LEVEL`` (INFO: a line per action)
unless ``--loglevel`` is lower. Other processes (the audit API, the events API: uvicorn) call
:func:`setup_process`, which gives the root logger one stderr handler in the same format.

A line carries ``time`` (UTC, RFC 3339, milliseconds), ``level``, ``logger``, ``message`` and,
when the call passed them as ``extra``, the fields in :data:`FIELDS`; ``trace_id`` is the current
trace's when tracing is on; ``exception`` holds a traceback. No PII or secrets: messages show
actions masked (``workers.core.redaction``), and twilio's request logging stays at WARNING
(``workers.taskrouter.gateway``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from workers import tracing

# The ledger's vocabulary (ops/LEDGER.md): the same words in the logs and the metrics' labels.
FIELDS = ("action_id", "reservation_sid", "correlation_id", "run", "outcome", "delay", "auditor", "trace_id")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if "trace_id" not in line and (trace_id := tracing.trace_id()) is not None:
            line["trace_id"] = trace_id  # the span the line was logged in (formatting is synchronous)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def wants_json(log_format: str, stream: Any = None) -> bool:
    """Whether ``log_format`` (``LOG_FORMAT``) asks for JSON (``auto``: when ``stream``, stderr,
    is not a terminal)."""
    if log_format == "auto":
        stream = sys.__stderr__ if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return not (isatty is not None and isatty())
    return log_format == "json"


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)


OURS = "workers"
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(name)s] %(message)s"  # Celery's


def logger_setup(log_format: str, log_level: str = "INFO") -> Callable[..., None]:
    """A receiver of Celery's ``after_setup_logger`` and ``after_setup_task_logger`` signals."""

    def on_logger_setup(logger: logging.Logger, loglevel: int | str | None = None, **_: Any) -> None:
        if wants_json(log_format):
            use_json(logger)
        logging.getLogger(OURS).setLevel(min(_level(log_level), _level(loglevel or logging.CRITICAL)))

    return on_logger_setup


def setup_process(log_format: str, log_level: str = "INFO", stream: Any = None) -> logging.Handler:
    """Logging for a process that is not a Celery worker: one handler on the root logger, to
    ``stream`` (stderr), JSON or text as ``log_format`` says, at ``log_level``. Its handler."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    json_lines = wants_json(log_format, handler.stream)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(log_level)
    return handler


def _level(level: int | str) -> int:
    return (
        level if isinstance(level, int) else logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    )
