"""Twelve-factor configuration: everything comes from the environment, with local defaults.

The defaults run against the services of a development machine (RabbitMQ and PostgreSQL on
loopback). TaskRouter credentials have no default: whatever calls TaskRouter asks for them with
``Settings.twilio_credentials()`` (the emulator's well-known ones live with the emulator, in
``workers.testing``). Secrets are kept out of ``repr`` so that they never reach a log line by accident.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from workers.core.retry import RetryPolicy
from workers.errors import ConfigurationError

T = TypeVar("T")

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/reservations"
DEFAULT_TASKROUTER_BASE_URL = "https://taskrouter.twilio.com"


@dataclass(frozen=True, slots=True)
class TwilioCredentials:
    """How the twilio SDK authenticates: an auth token, or an API key and secret."""

    account_sid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    taskrouter_base_url: str = DEFAULT_TASKROUTER_BASE_URL
    # None until TWILIO_* are set: there are no default credentials (see twilio_credentials()).
    twilio: TwilioCredentials | None = None
    ledger_pii_key: str | None = field(default=None, repr=False)
    # The role that owns the ledger's tables runs migrations; defaults to DATABASE_URL.
    ledger_migration_url: str | None = field(default=None, repr=False)
    audit_api_token: str | None = field(default=None, repr=False)
    # Named auditors' tokens ("name:token,..."), and a file of such lines; see workers/audit/auth.py.
    audit_api_tokens: str | None = field(default=None, repr=False)
    audit_api_tokens_file: str | None = None
    # Seconds between the audit API's background ledger verify runs (0: none).
    audit_verify_interval: float = 3600.0
    # Ed25519 key that signs checkpoint digests (PEM or base64 raw); see workers/ledger/digests.py.
    ledger_signing_key: str | None = field(default=None, repr=False)
    # Fernet key(s) sealing the sensitive parameters of dead letters (workers.broker.sealing);
    # unset: they are left out of dead letters, and such actions cannot be redriven.
    dead_letter_key: str | None = field(default=None, repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # AMQP heartbeat in seconds (0: none); None leaves Celery's default. Green pools (gevent,
    # eventlet) need 0: with heartbeats Celery 5.7's loop for them takes one task per 0.1 s.
    broker_heartbeat: float | None = None
    # Sizing: ledger connections per worker process (one per action in flight, plus a few),
    # confirmed publishers per process, and the intake's prefetch and threads.
    ledger_pool_max: int = 36
    publish_pool_limit: int = 32
    intake_prefetch: int = 32
    intake_threads: int = 8
    # Operations: where /metrics is served ("[host:]port"; None: nowhere), prometheus_client's
    # multiprocess directory (needed with the prefork pool), the file touched once the worker
    # consumes, and the log format (auto, json or text).
    worker_metrics_port: str | None = None
    prometheus_multiproc_dir: str | None = None
    worker_ready_file: str | None = None
    log_format: str = "auto"
    # The level of our own loggers (``workers.*``), whatever Celery's --loglevel (default WARNING):
    # one INFO line per action by default. A lower --loglevel (DEBUG) lowers it too.
    log_level: str = "INFO"
    # OpenTelemetry: the span exporter the standard OTEL_* variables choose (otlp, console), or
    # None: tracing off, and where OTLP spans go (None: the SDK's default, localhost:4318). The SDK
    # reads its other OTEL_* variables itself (workers.tracing).
    traces_exporter: str | None = None
    otlp_traces_endpoint: str | None = None
    # The events API (workers/events): the public URL TaskRouter posts to (signatures are computed
    # over it: we sit behind proxies), the secret callbacks are signed with (EVENTS_AUTH_TOKEN, else
    # TWILIO_AUTH_TOKEN), how Event Streams deliveries are checked ("signature", "basic" or
    # "signature,basic": all of those listed), the basic-auth "user:password" for the latter, and
    # the group commit: transitions per round trip at most, and committing threads (connections).
    events_public_url: str | None = None
    events_auth_token: str | None = field(default=None, repr=False)
    events_streams_auth: tuple[str, ...] = ("signature",)
    events_basic_auth: str | None = field(default=None, repr=False)
    events_batch_max: int = 200
    events_writers: int = 4
    # Where Flower listens ("host:port", from FLOWER_ADDRESS and FLOWER_PORT, which Flower reads
    # itself): `reservations doctor` checks the port. Loopback unless told (workers/flower.py).
    flower_address: str = "127.0.0.1:5555"
    # The account-wide TaskRouter concurrency governor (workers.taskrouter.governor): the account's
    # limit of requests in flight (0: no governor), the part of it kept for other applications of
    # the account (the Flex UI, ...), how long a process's lease lives without renewal (a killed
    # worker's share is free after it), and how long a call may wait for a slot.
    taskrouter_max_concurrency: int = 50
    taskrouter_reserved_concurrency: int = 10
    taskrouter_lease_seconds: float = 10.0
    taskrouter_slot_wait: float = 10.0

    def __post_init__(self) -> None:
        if self.taskrouter_max_concurrency and (
            self.taskrouter_reserved_concurrency >= self.taskrouter_max_concurrency
        ):
            raise ConfigurationError(
                "TASKROUTER_RESERVED_CONCURRENCY must be less than TASKROUTER_MAX_CONCURRENCY"
                f" ({self.taskrouter_reserved_concurrency} >= {self.taskrouter_max_concurrency}):"
                " the workers would have no share of the account's budget"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            broker_url=_url(env, "CELERY_BROKER_URL", DEFAULT_BROKER_URL, BROKER_SCHEMES),
            database_url=_url(env, "DATABASE_URL", DEFAULT_DATABASE_URL, DATABASE_SCHEMES),
            taskrouter_base_url=_url(
                env, "TASKROUTER_BASE_URL", DEFAULT_TASKROUTER_BASE_URL, HTTP_SCHEMES
            ).rstrip("/"),
            twilio=_twilio_credentials(env),
            ledger_pii_key=env.get("LEDGER_PII_KEY") or None,
            ledger_migration_url=_url(env, "LEDGER_MIGRATION_URL", None, DATABASE_SCHEMES),
            audit_api_token=env.get("AUDIT_API_TOKEN") or None,
            audit_api_tokens=env.get("AUDIT_API_TOKENS") or None,
            audit_api_tokens_file=env.get("AUDIT_API_TOKENS_FILE") or None,
            audit_verify_interval=_seconds_or(env, "AUDIT_VERIFY_INTERVAL", 3600.0),
            ledger_signing_key=env.get("LEDGER_SIGNING_KEY") or None,
            dead_letter_key=_fernet_keys(env, "DEAD_LETTER_KEY"),
            retry=_retry_policy(env),
            broker_heartbeat=_seconds(env, "BROKER_HEARTBEAT"),
            ledger_pool_max=_count(env, "LEDGER_POOL_MAX", 36),
            publish_pool_limit=_count(env, "PUBLISH_POOL_LIMIT", 32),
            intake_prefetch=_count(env, "INTAKE_PREFETCH", 32),
            intake_threads=_count(env, "INTAKE_THREADS", 8, minimum=0),
            worker_metrics_port=_address(env, "WORKER_METRICS_PORT"),
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            worker_ready_file=env.get("WORKER_READY_FILE") or None,
            log_format=_log_format(env),
            log_level=_log_level(env),
            traces_exporter=_traces_exporter(env),
            otlp_traces_endpoint=_otlp_traces_endpoint(env),
            events_public_url=env.get("EVENTS_PUBLIC_URL", "").strip() or None,
            events_auth_token=env.get("EVENTS_AUTH_TOKEN") or env.get("TWILIO_AUTH_TOKEN") or None,
            events_streams_auth=_streams_auth(env),
            events_basic_auth=_basic_auth(env),
            events_batch_max=_count(env, "EVENTS_BATCH_MAX", 200),
            events_writers=_count(env, "EVENTS_WRITERS", 4),
            flower_address=_flower_address(env),
            taskrouter_max_concurrency=_count(env, "TASKROUTER_MAX_CONCURRENCY", 50, minimum=0),
            taskrouter_reserved_concurrency=_count(env, "TASKROUTER_RESERVED_CONCURRENCY", 10, minimum=0),
            taskrouter_lease_seconds=_positive(env, "TASKROUTER_LEASE_SECONDS", 10.0),
            taskrouter_slot_wait=_positive(env, "TASKROUTER_SLOT_WAIT", 10.0),
        )

    def twilio_credentials(self) -> TwilioCredentials:
        """The credentials TaskRouter calls need; a ConfigurationError when none are set."""
        if self.twilio is None:
            raise ConfigurationError(
                f"no TaskRouter credentials for {self.taskrouter_base_url}: set TWILIO_ACCOUNT_SID and"
                " TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET)"
            )
        return self.twilio

    @property
    def migration_url(self) -> str:
        """Where ``reservations migrate`` connects: LEDGER_MIGRATION_URL, else DATABASE_URL."""
        return self.ledger_migration_url or self.database_url


def export(values: Mapping[str, str]) -> None:
    """Leave ``values`` in this process's environment for the processes it starts, which read
    their settings with :meth:`Settings.from_env` (``events-api --workers``: uvicorn spawns them)."""
    os.environ.update(values)


def broker_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``CELERY_BROKER_URL`` alone: what a producer needs (it needs no other setting)."""
    env = os.environ if environ is None else environ
    return env.get("CELERY_BROKER_URL", DEFAULT_BROKER_URL)


def _count(env: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    count = _parsed(env, name, int, "a whole number")
    if count is None:
        return default
    if count < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, not {count}")
    return count


def _parsed(env: Mapping[str, str], name: str, parse: Callable[[str], T], what: str) -> T | None:
    """``name``'s value read by ``parse`` (None when unset or blank); ``what`` it must be, if not."""
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return parse(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be {what}, not {value!r}") from None


LOG_FORMATS = ("auto", "json", "text")


def _log_format(env: Mapping[str, str]) -> str:
    chosen = env.get("LOG_FORMAT", "auto").strip().lower() or "auto"
    if chosen not in LOG_FORMATS:
        raise ConfigurationError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {chosen!r}")
    return chosen


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(env: Mapping[str, str]) -> str:
    chosen = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if chosen not in LOG_LEVELS:
        raise ConfigurationError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {chosen!r}")
    return chosen


TRACES_EXPORTERS = ("otlp", "console", "none")


def _traces_exporter(env: Mapping[str, str]) -> str | None:
    """Tracing is opt-in, as OpenTelemetry's variables say: OTEL_TRACES_EXPORTER (otlp, console,
    none), or an OTLP endpoint set (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT) implying otlp;
    OTEL_SDK_DISABLED=true turns it off. OTLP is sent over HTTP (http/protobuf)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not chosen:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        chosen = "otlp" if endpoint and endpoint.strip() else "none"
    if chosen not in TRACES_EXPORTERS:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER must be one of {', '.join(TRACES_EXPORTERS)}, not {chosen!r}"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if chosen == "otlp" and protocol not in ("", "http/protobuf"):
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf (the exporter installed), not {protocol!r}"
        )
    return None if chosen == "none" else chosen


def _otlp_traces_endpoint(env: Mapping[str, str]) -> str | None:
    """As OpenTelemetry defines them: the traces endpoint as given, else the base endpoint with
    /v1/traces appended. Empty values count as unset (compose passes them empty)."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/traces" if base else None


STREAMS_AUTH = ("signature", "basic")


def _streams_auth(env: Mapping[str, str]) -> tuple[str, ...]:
    return streams_auth(env.get("EVENTS_STREAMS_AUTH", ""))


def streams_auth(text: str) -> tuple[str, ...]:
    """EVENTS_STREAMS_AUTH: the checks an Event Streams delivery must pass, comma-separated."""
    value = text.strip().lower() or "signature"
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [part for part in chosen if part not in STREAMS_AUTH]
    if unknown or not chosen:
        raise ConfigurationError(
            f"EVENTS_STREAMS_AUTH must be signature, basic or signature,basic, not {value!r}"
        )
    return chosen


def _basic_auth(env: Mapping[str, str]) -> str | None:
    value = env.get("EVENTS_BASIC_AUTH") or None
    if value is not None and ":" not in value:
        raise ConfigurationError("EVENTS_BASIC_AUTH must be user:password")
    return value


def _fernet_keys(env: Mapping[str, str], name: str) -> str | None:
    """One or more comma-separated Fernet keys (url-safe base64 of 32 bytes), checked here so that
    a bad key stops the worker at start rather than at its first dead letter."""
    value = env.get(name, "").strip()
    if not value:
        return None
    for part in value.split(","):
        try:
            raw = base64.urlsafe_b64decode(part.strip().encode("ascii"))
        except (ValueError, UnicodeError):
            raw = b""
        if len(raw) != 32:
            raise ConfigurationError(
                f"{name} must be Fernet keys (url-safe base64 of 32 bytes, comma-separated); make one"
                " with: python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'"
            )
    return value


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    seconds = _parsed(env, name, float, "a number of seconds")
    if seconds is not None and seconds < 0:
        raise ConfigurationError(f"{name} must not be negative")
    return seconds


def _seconds_or(env: Mapping[str, str], name: str, default: float) -> float:
    seconds = _seconds(env, name)
    return default if seconds is None else seconds


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    seconds = _seconds_or(env, name, default)
    if seconds == 0:
        raise ConfigurationError(f"{name} must be more than 0 seconds")
    return seconds


def _retry_policy(env: Mapping[str, str]) -> RetryPolicy:
    """RETRY_* variables override the policy's defaults (tests shorten the waits with them)."""
    d = RetryPolicy()
    whole = "a whole number"
    try:
        return RetryPolicy(
            immediate_conflict_tries=_or(
                _parsed(env, "RETRY_CONFLICT_TRIES", int, whole), d.immediate_conflict_tries
            ),
            immediate_conflict_pause=_or(_seconds(env, "RETRY_CONFLICT_PAUSE"), d.immediate_conflict_pause),
            max_delayed_retries=_or(_parsed(env, "RETRY_MAX_RETRIES", int, whole), d.max_delayed_retries),
            base_delay=_or(_seconds(env, "RETRY_BASE_DELAY"), d.base_delay),
            max_delay=_or(_seconds(env, "RETRY_MAX_DELAY"), d.max_delay),
            in_flight=_or(_seconds(env, "RETRY_IN_FLIGHT"), d.in_flight),
        )
    except ValueError as exc:
        raise ConfigurationError(f"RETRY_* settings do not make a retry policy: {exc}") from exc


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


BROKER_SCHEMES = ("amqp", "amqps", "pyamqp")
DATABASE_SCHEMES = ("postgresql", "postgres")
HTTP_SCHEMES = ("https", "http")


def _url(env: Mapping[str, str], name: str, default: T, schemes: tuple[str, ...]) -> str | T:
    """``name``'s URL, refused unless its scheme is one of ``schemes`` (a typo fails at start, in
    one line, instead of deep inside a driver); ``default`` when unset or blank."""
    value = env.get(name, "").strip()
    if not value:
        return default
    scheme, separator, rest = value.partition("://")
    if not separator and "postgresql" in schemes and "=" in value:
        return value  # libpq's key=value form ("host=db dbname=reservations")
    if not separator or scheme.lower() not in schemes or not rest:
        expected = " or ".join(f"{s}://..." for s in schemes[:2])
        # The value may hold a password: only its scheme is shown.
        shown = f"{scheme}://..." if separator else "a value without a scheme"
        raise ConfigurationError(f"{name} must be a URL like {expected}, not {shown}")
    return value


def _flower_address(env: Mapping[str, str]) -> str:
    host = env.get("FLOWER_ADDRESS", "").strip() or "127.0.0.1"
    port = _parsed(env, "FLOWER_PORT", int, "a port number")
    return f"{host}:{5555 if port is None else port}"


def _address(env: Mapping[str, str], name: str) -> str | None:
    """``[host:]port`` (port 0 to 65535), or None when unset or blank."""
    value = env.get(name, "").strip()
    if not value:
        return None
    _, _, port = value.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"{name} must be [host:]port, e.g. 9808 or 127.0.0.1:9808, not {value!r}")
    return value


def _twilio_credentials(env: Mapping[str, str]) -> TwilioCredentials | None:
    """TWILIO_* as given, or None when none is set; never a default."""
    account_sid = env.get("TWILIO_ACCOUNT_SID") or None
    api_key, api_secret = env.get("TWILIO_API_KEY"), env.get("TWILIO_API_SECRET")
    token = env.get("TWILIO_AUTH_TOKEN")
    if account_sid is None:
        if api_key or api_secret or token:
            raise ConfigurationError("TWILIO_ACCOUNT_SID must be set with the other TWILIO_* credentials")
        return None
    if api_key or api_secret:
        if not (api_key and api_secret):
            raise ConfigurationError("TWILIO_API_KEY and TWILIO_API_SECRET must be set together")
        return TwilioCredentials(account_sid, api_key, api_secret)
    if token is None:
        raise ConfigurationError(
            "TWILIO_ACCOUNT_SID is set, but neither TWILIO_AUTH_TOKEN"
            " nor TWILIO_API_KEY and TWILIO_API_SECRET are"
        )
    return TwilioCredentials(account_sid, account_sid, token)
