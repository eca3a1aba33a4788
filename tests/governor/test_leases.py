"""The governor's mechanism against real PostgreSQL: leases that share one budget, expire, and
carry 429s to the whole fleet; the local slots that admit requests under them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from workers.core.governor import BudgetPolicy, Lease, Report
from workers.errors import LedgerPermissionDenied, SlotUnavailable
from workers.ledger.connector import connect, translated
from workers.ledger.leases import PostgresLeases
from workers.ledger.models import Role
from workers.taskrouter.governor import Governor


def _account() -> str:
    return "AC" + uuid.uuid4().hex


@pytest.fixture
def account() -> str:
    return _account()


@pytest.fixture
def stores(db_url: str, account: str) -> Iterator[list[PostgresLeases]]:
    opened: list[PostgresLeases] = []
    yield opened
    for store in opened:
        store.close()


def _store(stores: list[PostgresLeases], db_url: str, account: str, ttl: float = 30.0) -> PostgresLeases:
    store = PostgresLeases(db_url, account, BudgetPolicy(20, floor=5, cooldown=0.0), ttl=ttl)
    stores.append(store)
    return store


def test_processes_share_the_budget_and_never_overdraw_it(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    a, b, c = (_store(stores, db_url, account) for _ in range(3))
    first = a.heartbeat(Report("a", demand=32, in_flight=0))
    assert first.granted == 20  # alone: the whole budget
    # b arrives while a holds everything: b gets nothing until a gives back its excess.
    assert b.heartbeat(Report("b", demand=32, in_flight=0)).granted == 0
    assert a.heartbeat(Report("a", demand=32, in_flight=0)).granted == 10
    assert b.heartbeat(Report("b", demand=32, in_flight=0)).granted == 10
    c.heartbeat(Report("c", demand=2, in_flight=0))
    for _ in range(3):
        for store, holder, demand in ((a, "a", 32), (b, "b", 32), (c, "c", 2)):
            store.heartbeat(Report(holder, demand=demand, in_flight=0))
    rows = {row.holder: row for row in a.leases()}
    assert {name: row.granted for name, row in rows.items()} == {"a": 9, "b": 9, "c": 2}


def test_a_shrinking_lease_keeps_counting_what_is_in_flight(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    a, b = _store(stores, db_url, account), _store(stores, db_url, account)
    a.heartbeat(Report("a", demand=32, in_flight=0))
    b.heartbeat(Report("b", demand=32, in_flight=0))
    # a still has 20 requests in flight: its lease records them, so b gets nothing yet.
    assert a.heartbeat(Report("a", demand=32, in_flight=20)).granted == 10
    assert b.heartbeat(Report("b", demand=32, in_flight=0)).granted == 0
    assert a.heartbeat(Report("a", demand=32, in_flight=4)).granted == 10
    assert b.heartbeat(Report("b", demand=32, in_flight=0)).granted == 10


def test_a_lease_nobody_renews_expires_and_frees_its_share(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    dead = _store(stores, db_url, account, ttl=0.5)
    live = _store(stores, db_url, account, ttl=30.0)
    dead.heartbeat(Report("dead", demand=32, in_flight=20))
    assert live.heartbeat(Report("live", demand=32, in_flight=0)).granted == 0
    threading.Event().wait(0.6)  # the dead process's lease time
    lease = live.heartbeat(Report("live", demand=32, in_flight=0))
    assert lease.expired == ("dead",)
    assert lease.granted == 20
    assert [row.holder for row in live.leases()] == ["live"]


def test_a_429_anywhere_shrinks_the_budget_for_everyone(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    a, b = _store(stores, db_url, account), _store(stores, db_url, account)
    a.heartbeat(Report("a", demand=32, in_flight=0))
    throttled = b.heartbeat(Report("b", demand=32, in_flight=0, throttled=2, retry_after=60.0))
    assert throttled.budget == 15
    # a sees the smaller budget at its next heartbeat and gives back down to its fair share of it;
    # Retry-After holds the budget still for its 60 s.
    assert a.heartbeat(Report("a", demand=32, in_flight=0)).budget == 15
    assert a.heartbeat(Report("a", demand=32, in_flight=0)).granted == 8


def test_the_workers_role_may_renew_leases_but_not_rewrite_the_ledger(db_url: str, account: str) -> None:
    with connect(db_url, Role.WRITER) as conn:
        with pytest.raises(LedgerPermissionDenied), translated():
            conn.execute("DELETE FROM ledger.taskrouter_budget")
        with pytest.raises(LedgerPermissionDenied), translated():
            conn.execute("TRUNCATE ledger.taskrouter_leases")
    with connect(db_url, Role.READER) as conn, pytest.raises(LedgerPermissionDenied), translated():
        conn.execute("DELETE FROM ledger.taskrouter_leases")


def test_a_governor_admits_its_share_then_waits_a_bounded_time(db_url: str, account: str) -> None:
    store = PostgresLeases(db_url, account, BudgetPolicy(2, floor=1), ttl=30.0)
    governor = Governor(store, slot_wait=0.2, interval=30.0)
    governor.start()
    try:
        with governor.slot(), governor.slot():
            assert governor.slots.in_flight == 2
            with pytest.raises(SlotUnavailable, match="no TaskRouter slot"), governor.slot():
                pass  # pragma: no cover - never entered
        assert governor.slots.in_flight == 0  # every slot given back, the refused one never taken
    finally:
        governor.close()
    with connect(db_url, Role.READER) as conn:
        left = conn.execute(
            "SELECT count(*) FROM ledger.taskrouter_leases WHERE account_sid = %s", [account]
        ).fetchone()
    assert left == (0,)  # a clean stop gives the share back at once


def test_a_governor_without_its_database_falls_back_to_one_slot(account: str) -> None:
    store = PostgresLeases("postgresql://nobody@127.0.0.1:1/none", account, BudgetPolicy(20), ttl=30.0)
    governor = Governor(store, slot_wait=0.1, interval=30.0)
    governor.start()  # never raises: requests go on, one at a time
    try:
        assert governor.slots.limit == 1
        with governor.slot():
            pass
    finally:
        governor.close()


class _BusyMeanwhile:
    """A store whose heartbeat takes a while, during which the process's requests keep coming:
    they fill every slot of the share in force, as a busy worker's threads do."""

    def __init__(self, store: PostgresLeases) -> None:
        self.store = store
        self.ttl = store.ttl
        self.governor: Governor | None = None
        self.fill = False

    def heartbeat(self, report: Report) -> Lease:
        assert self.governor is not None
        slots = self.governor.slots
        while self.fill and slots.acquire(0.0) is not None:
            pass
        return self.store.heartbeat(report)

    def drop(self, holder: str) -> None:
        self.store.drop(holder)

    def close(self) -> None:
        self.store.close()


def test_a_share_being_given_back_is_not_handed_on_while_the_process_may_still_fill_it(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    busy = _BusyMeanwhile(_store(stores, db_url, account))
    first = Governor(busy, slot_wait=0.1, interval=30.0, holder="a-first")
    busy.governor = first
    first.beat()
    assert first.slots.limit == 20  # alone: the whole budget
    other = _store(stores, db_url, account)
    assert other.heartbeat(Report("b-other", demand=32, in_flight=0)).granted == 0
    for _ in range(20):  # it was busy: it asks for its fair share, half the budget
        assert first.slots.acquire(0.0) is not None
    for _ in range(20):
        first.slots.release()
    # It gives back half; while it asks, its threads fill the 20 slots it still has.
    busy.fill = True
    first.beat()
    assert first.slots.limit == 10
    assert first.slots.in_flight == 20
    # The other process must not be given slots that are in flight already.
    granted = other.heartbeat(Report("b-other", demand=32, in_flight=0)).granted
    assert first.slots.in_flight + granted <= 20


def test_a_governor_whose_renewal_is_late_stops_admitting_before_its_lease_expires(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    now = [1000.0]
    store = _store(stores, db_url, account, ttl=10.0)
    governor = Governor(store, slot_wait=0.05, interval=30.0, clock=lambda: now[0])
    governor.beat()
    with governor.slot():
        pass
    now[0] += 10.0  # no renewal for a whole lease: the database may have given the share away
    with pytest.raises(SlotUnavailable), governor.slot():
        pass  # pragma: no cover - never entered
    governor.beat()  # renewed: admitted again
    with governor.slot():
        assert governor.slots.in_flight == 1


def test_a_governor_that_closes_with_calls_in_flight_neither_admits_more_nor_gives_their_slots_away(
    db_url: str, account: str, stores: list[PostgresLeases]
) -> None:
    store = _store(stores, db_url, account)
    governor = Governor(store, slot_wait=0.05, interval=30.0, holder="a-closing")
    governor.beat()
    assert governor.slots.limit == 20
    assert governor.slots.acquire(0.0) is not None  # a call on the wire (another thread's)
    closing = threading.Thread(target=governor.close)
    closing.start()
    try:
        closing.join(0.3)
        # Once it stops, the process admits no new call: its share is being given back.
        assert governor.slots.acquire(0.0) is None
        # The call still in flight keeps its slot: another process must not be handed all 20.
        other = _store(stores, db_url, account)
        granted = other.heartbeat(Report("b-other", demand=32, in_flight=0)).granted
        assert granted + governor.slots.in_flight <= 20
    finally:
        while governor.slots.in_flight:
            governor.slots.release()
        closing.join(10.0)
    assert not closing.is_alive()
    # Once the call has landed the share is given back at once.
    assert other.heartbeat(Report("b-other", demand=32, in_flight=0)).granted == 20
