"""Flower's settings for this system, for ``--conf=ops/flower/flowerconfig.py``.

``celery -A workers flower`` loads the same settings without ``--conf``: they live in the package,
``workers/flowerconfig.py`` (workers/flower.py says how), and this file only re-exports them.
"""

from workers.flowerconfig import *  # noqa: F403 - Flower reads every name of this file
