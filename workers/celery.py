"""The worker's entry point: ``celery -A workers worker`` (and Flower) find ``app`` here.

Only Celery's command line imports this module: it builds the app from the environment once.
Everything else builds its own with :func:`workers.composition.create_app`.

Under ``celery -A workers flower`` it first gives Flower our secure defaults (workers/flower.py).

A bad setting stops the process here with one line naming the variable (exit status 2): left to
Celery, the import error becomes a long traceback blaming ``module 'workers' has no attribute
'celery'``.
"""

from __future__ import annotations

import sys

import click

from workers.composition import create_app
from workers.config import Settings
from workers.errors import ConfigurationError

_celery = click.get_current_context(silent=True)
if _celery is not None and _celery.invoked_subcommand == "flower":
    from workers.flower import prepare

    prepare()

try:
    app = create_app(Settings.from_env())
except ConfigurationError as exc:
    print(f"error: {exc}", file=sys.stderr)  # no logging is set up yet
    raise SystemExit(2) from None
