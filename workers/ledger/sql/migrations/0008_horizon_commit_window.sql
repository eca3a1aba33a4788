-- 0008: the read horizon holds back a ledger writer caught between its commit and the release of
-- its xid lock. PostgreSQL records a commit, then leaves the running set, then releases the
-- transaction's locks, and the writers' advisory lock can be released before the xid lock: a
-- writer in flight at the reader's snapshot could be seen, at the read of the lock table, holding
-- its xid lock without the writers' lock, taken for a transaction that never appends, and a
-- reader paging by cursor skipped its rows for good (tests/ledger/test_ordering.py, about one
-- run in four). A transaction of this database that holds its xid lock without the writers' lock
-- now holds the horizon back unless it is still in progress (pg_xact_status, read after the lock
-- table); transactions of other databases still never do.
SET LOCAL ROLE reservations_owner;

CREATE OR REPLACE FUNCTION ledger.visible_horizon(s pg_snapshot) RETURNS xid8
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon xid8;
    ended xid8[];
    settling xid8[];
    local_pids integer[];
BEGIN
    -- The backends connected to this database, read before the lock table: a writer in flight at
    -- s is among them, unless it has disconnected, and then it has ended before that read.
    SELECT array_agg(a.pid) INTO local_pids
      FROM pg_stat_activity a
     WHERE a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    WITH locks AS MATERIALIZED (  -- one read of the lock table
        SELECT l.locktype, l.transactionid, l.virtualtransaction, l.database, l.pid
          FROM pg_locks l
         WHERE l.granted
           AND ((l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock')
             OR (l.locktype = 'advisory' AND l.classid = 1279607881 AND l.objid = 0 AND l.objsubid = 2))
    ), running AS (
        SELECT (l.transactionid::text)::bigint AS xid32, l.virtualtransaction, l.pid
          FROM locks l
         WHERE l.locktype = 'transactionid'
    ), writing AS (
        SELECT r.xid32
          FROM running r
          JOIN locks w ON w.virtualtransaction = r.virtualtransaction AND w.locktype = 'advisory'
         WHERE w.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
    ), in_flight AS (
        SELECT x, (x::text)::bigint % 4294967296 AS xid32 FROM pg_snapshot_xip(s) AS x
    )
    SELECT least(pg_snapshot_xmax(s), (SELECT min(f.x) FROM in_flight f WHERE f.xid32 IN (SELECT xid32 FROM writing))),
           (SELECT array_agg(f.x) FROM in_flight f WHERE f.xid32 NOT IN (SELECT xid32 FROM running)),
           (SELECT array_agg(f.x) FROM in_flight f
             WHERE f.xid32 IN (SELECT r.xid32 FROM running r WHERE r.pid = ANY(local_pids))
               AND f.xid32 NOT IN (SELECT xid32 FROM writing))
      INTO horizon, ended, settling;
    -- A new statement, after that read of the lock table: a transaction of this database that
    -- held its xid lock without the writers' lock and that is no longer in progress is ending
    -- (PostgreSQL records the commit, then leaves the running set, then releases its locks; the
    -- writers' lock may go first): it may be a ledger writer whose rows s does not show, so it
    -- holds the horizon back. One still in progress never appends (join_writers); one of another
    -- database never holds a reader of this one back.
    horizon := least(horizon, (
        SELECT min(x) FROM unnest(settling) AS x WHERE pg_xact_status(x) IS DISTINCT FROM 'in progress'
    ));
    IF ended IS NULL THEN
        RETURN horizon;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN least(horizon, (SELECT min(x) FROM unnest(ended) AS x));
    END IF;
    -- A new statement, so a new snapshot: it shows the rows of every transaction in `ended`.
    RETURN least(horizon, (
        SELECT min(x) FROM unnest(ended) AS x
         WHERE x < horizon AND EXISTS (SELECT FROM ledger.events e WHERE e.tx_id = x)
    ));
END
$$;
