"""A busy shared cluster, on purpose: what the suite runs next to unless told otherwise.

Production shares its PostgreSQL cluster with strangers, and so does a test run on a shared
machine. For the whole session :func:`busy_cluster` keeps, in databases of its own:

* an idle transaction that holds a transaction id (an analyst's forgotten ``BEGIN``, a long
  ``pg_dump``-like reader with an xid), and
* a writer that commits short transactions in a loop, each holding its xid for a few
  milliseconds (another application).

Neither touches a ledger database, so no ledger reader may wait for either. Set
``LEDGER_TEST_QUIET_CLUSTER=1`` to run without them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg

from workers.ledger.connector import drop_database, ensure_database, with_database

logger = logging.getLogger(__name__)


@dataclass
class BusyCluster:
    """What is running: the held transaction's id and how many foreign commits were made."""

    idle_url: str
    writer_url: str
    held_xid: int = 0
    commits: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)


def _scratch(admin_url: str, kind: str) -> str:
    from tests.support.services import scratch_name

    url = with_database(admin_url, scratch_name(kind))
    ensure_database(url)
    return url


def _write_loop(busy: BusyCluster) -> None:
    with psycopg.connect(busy.writer_url, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS noise (n bigint, at timestamptz DEFAULT clock_timestamp())")
    with psycopg.connect(busy.writer_url) as conn:
        while not busy._stop.is_set():
            conn.execute("INSERT INTO noise (n) VALUES (%s)", [busy.commits])
            time.sleep(0.005)  # the xid is held while "the application" works
            conn.commit()
            busy.commits += 1
            time.sleep(0.002)


@contextmanager
def busy_cluster(admin_url: str) -> Iterator[BusyCluster | None]:
    """Hold a foreign xid and run a foreign writer for the duration; None if disabled."""
    if os.environ.get("LEDGER_TEST_QUIET_CLUSTER") == "1":
        yield None
        return
    busy = BusyCluster(_scratch(admin_url, "busyidle"), _scratch(admin_url, "busywrite"))
    idle = psycopg.connect(busy.idle_url)
    writer = threading.Thread(target=_write_loop, args=(busy,), name="foreign-writer", daemon=True)
    try:
        row = idle.execute("SELECT pg_current_xact_id()::text").fetchone()
        busy.held_xid = int(row[0]) if row else 0
        writer.start()
        yield busy
    finally:
        busy._stop.set()
        writer.join(timeout=10)
        with suppress(psycopg.Error):
            idle.rollback()
        idle.close()
        for url in (busy.idle_url, busy.writer_url):
            with suppress(Exception):
                drop_database(url)
        logger.info("busy cluster: %d foreign commits", busy.commits)
