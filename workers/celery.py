"""The worker's entry point: ``celery -A workers worker`` (and Flower) find ``app`` here.

Only Celery's command line imports this module: it builds the app from the environment once.
Everything else builds its own with :func:`workers.composition.create_app`.
"""

from __future__ import annotations

from workers.composition import create_app
from workers.config import Settings

app = create_app(Settings.from_env())
