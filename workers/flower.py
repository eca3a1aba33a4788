"""Flower, secure by default: ``celery -A workers flower`` loads our configuration, listens on
loopback unless told, refuses to start without authentication, and is read-only unless
``FLOWER_ALLOW_CONTROL`` is set.

Flower reads its options in this order, each overriding the last: ``FLOWER_*`` variables, its
``--conf`` file, its command line. :func:`prepare` (called by ``workers.celery`` when Celery's
subcommand is ``flower``) sets our values first, so the usual ways to override them still work:
``--conf`` defaults to :data:`CONFIG_FILE` (``workers/flowerconfig.py``, which
``ops/flower/flowerconfig.py`` re-exports) and ``--address`` to loopback.
"""

from __future__ import annotations

from pathlib import Path

from tornado.options import options

CONFIG_FILE = Path(__file__).with_name("flowerconfig.py")
LOOPBACK = "127.0.0.1"

REFUSAL = (
    "error: Flower refuses to start without authentication: set FLOWER_BASIC_AUTH=user:password"
    " (comma-separated for several), or FLOWER_AUTH (allowed e-mail addresses, a regular expression)"
    " with FLOWER_AUTH_PROVIDER and FLOWER_OAUTH2_KEY, FLOWER_OAUTH2_SECRET, FLOWER_OAUTH2_REDIRECT_URI"
    " (ops/RUNBOOK.md, 'Flower')"
)


def prepare() -> None:
    """Our defaults, before Flower reads its options; FLOWER_ALLOW_CONTROL becomes an option that
    Flower's own reading of ``FLOWER_*`` variables accepts (it stops at a name it does not know)."""
    import flower.options  # noqa: F401 - defines Flower's options (conf, address, read_only, ...)

    if "allow_control" not in options:
        options.define(
            "allow_control",
            type=bool,
            default=False,
            help="allow revoking tasks and controlling workers (FLOWER_ALLOW_CONTROL); read-only otherwise",
        )
    options.conf = str(CONFIG_FILE)
    options.address = LOOPBACK


def authenticated() -> bool:
    """Whether basic auth or OAuth (an allowed-address pattern with a provider) is configured."""
    return bool(options.basic_auth) or bool(options.auth and options.auth_provider)


def require_authentication() -> None:
    """Stop Flower, in one line, unless :func:`authenticated`."""
    if not authenticated():
        raise SystemExit(REFUSAL)
