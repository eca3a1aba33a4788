"""Flower's configuration for this system: Flower executes this file (``--conf``, which
:mod:`workers.flower` points here by default); each name below is one of Flower's options.

Secrets are not here: Flower reads ``FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for
several) or its OAuth variables, and ``FLOWER_BROKER_API`` (the RabbitMQ management API), from the
environment itself. Prometheus scrapes ``/metrics`` (Flower 2 serves it without authentication).
"""

from tornado.options import options

from workers.flower import require_authentication

# Keep what Flower learnt across restarts when FLOWER_PERSISTENT=true (compose: a named volume at
# FLOWER_DB); saved every minute.
state_save_interval = 60_000  # ms
# Tasks kept in memory: enough for a busy hour; older ones are in the ledger anyway.
max_tasks = 50_000
# A scaled-down worker disappears from the list after 10 minutes offline.
purge_offline_workers = 600
# No revoking, rate limits, time limits, pool or consumer changes and shut-downs from the web page
# or the HTTP API (403), unless FLOWER_ALLOW_CONTROL=true: operators use `celery control`.
read_only = not options.allow_control
inspect_timeout = 5000.0  # ms
# The task list shows the masked arguments (PII hashed, secrets dropped) the workers report.
tasks_columns = "name,uuid,state,args,received,started,runtime,worker,retries"
natural_time = False

require_authentication()
