"""Flower's settings for this system (``celery -A workers flower --conf=ops/flower/flowerconfig.py``).

Flower executes this file; each name is one of its options. Secrets are not here: Flower reads
``FLOWER_BASIC_AUTH`` (``user:password``, comma-separated for several) and ``FLOWER_BROKER_API``
(the RabbitMQ management API, ``http://user:password@rabbitmq:15672/api/``) from the
environment itself, as it does for every ``FLOWER_<OPTION>``; they override what is set here.
Prometheus metrics are served at ``/metrics`` (Flower 2 always serves them).
"""

import os

address = os.environ.get("FLOWER_ADDRESS", "0.0.0.0")  # noqa: S104 - inside the compose network
port = int(os.environ.get("FLOWER_PORT", "5555"))

# Keep what Flower learnt across restarts (task history and worker list), in a named volume.
persistent = True
db = os.environ.get("FLOWER_DB", "/var/lib/flower/flower.db")
state_save_interval = 60_000  # ms
# Tasks kept in memory: enough for a busy hour; older ones are in the ledger anyway.
max_tasks = 50_000
# A scaled-down worker disappears from the list after 10 minutes offline.
purge_offline_workers = 600
# Never revoke or shut down workers from the web page: operators do that with the CLI.
read_only = True
inspect_timeout = 5000.0  # ms
# The task list shows the masked arguments (PII hashed, secrets dropped) the workers report.
tasks_columns = "name,uuid,state,args,received,started,runtime,worker,retries"
natural_time = False
