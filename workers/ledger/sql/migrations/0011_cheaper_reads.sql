-- 0011: the ledger's reads at 10 M rows. The read horizon (ledger.visible_horizon, evaluated by
-- every history query) read pg_stat_activity and the lock table each time. Now a snapshot with
-- nothing in flight is answered from its xmax alone, and the backends of this database are read
-- only when a transaction seen in the lock table is ending (rare: the moment between a commit and
-- the release of its locks), then the lock table once more; the result is what 0008 computes.
-- That read is taken afresh (pg_stat_clear_snapshot): in a transaction that had read the
-- backends before, PostgreSQL answered from that first copy, which may predate the snapshot s.
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
    -- Nothing in flight at s: every transaction below its xmax had ended, and s shows its rows.
    IF NOT EXISTS (SELECT FROM pg_snapshot_xip(s)) THEN
        RETURN pg_snapshot_xmax(s);
    END IF;
    LOOP
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
                 WHERE f.xid32 IN (SELECT r.xid32 FROM running r WHERE local_pids IS NULL OR r.pid = ANY(local_pids))
                   AND f.xid32 NOT IN (SELECT xid32 FROM writing))
          INTO horizon, ended, settling;
        -- A new statement, after that read of the lock table: a transaction that held its xid lock
        -- without the writers' lock and that is no longer in progress is ending (PostgreSQL
        -- records the commit, then leaves the running set, then releases its locks; the writers'
        -- lock may go first): it may be a ledger writer whose rows s does not show. One still in
        -- progress never appends (join_writers).
        settling := ARRAY(
            SELECT x FROM unnest(settling) AS x WHERE pg_xact_status(x) IS DISTINCT FROM 'in progress'
        );
        EXIT WHEN cardinality(settling) = 0 OR local_pids IS NOT NULL;
        -- One is ending: only one of this database holds the horizon back. Read which backends are
        -- connected to this database (afresh: not a copy this transaction read before), then the
        -- lock table again: a writer in flight at s is among them, unless it has disconnected, and
        -- then it has ended before that read.
        PERFORM pg_stat_clear_snapshot();
        SELECT coalesce(array_agg(pg_stat_get_backend_pid(b)), '{}') INTO local_pids
          FROM pg_stat_get_backend_idset() AS b
         WHERE pg_stat_get_backend_dbid(b) = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    END LOOP;
    horizon := least(horizon, (SELECT min(x) FROM unnest(settling) AS x));
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
