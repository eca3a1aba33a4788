-- 0006: a transaction that has joined the ledger's writers reads the lock table once, not on every
-- append. The events API commits a batch of transitions in one transaction; every append after the
-- first held an xid, so join_writers read pg_locks again (the whole lock table, every backend's
-- locks: 0.5 ms of the 1.6 ms an append cost on a loaded machine, 3-17 ms per call measured under
-- load). Now join_writers leaves a transaction-local mark, ledger.joined, that names this backend
-- and this transaction's start; an append that finds the mark of its own transaction has joined
-- (before its xid: join_writers sets the mark only after taking the lock without an xid, or after
-- finding the lock held in pg_locks), and skips the read. Anything else (no mark, a mark left at
-- session level, one copied from an earlier transaction) reads pg_locks as before. A writer who
-- forges the mark could as well take the advisory lock itself after its xid, which the pg_locks
-- check never caught either: both guard against a mistake, not against the writer role.
SET LOCAL ROLE reservations_owner;

CREATE OR REPLACE FUNCTION ledger.join_writers() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mark text := pg_backend_pid()::text || ' ' || extract(epoch FROM transaction_timestamp())::text;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        PERFORM pg_advisory_xact_lock_shared(1279607881, 0);
    ELSIF current_setting('ledger.joined', true) IS DISTINCT FROM mark AND NOT EXISTS (
        SELECT FROM pg_locks l
         WHERE l.pid = pg_backend_pid() AND l.locktype = 'advisory' AND l.granted
           AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
           AND l.classid = 1279607881 AND l.objid = 0 AND l.objsubid = 2
    ) THEN
        RAISE EXCEPTION 'a ledger append must come before any other write of its transaction'
            USING ERRCODE = 'RL003',
                  HINT = 'append in a transaction of its own (the ledger''s functions in autocommit)';
    END IF;
    PERFORM set_config('ledger.writing', 'on', true);
    PERFORM set_config('ledger.joined', mark, true);
END
$$;
