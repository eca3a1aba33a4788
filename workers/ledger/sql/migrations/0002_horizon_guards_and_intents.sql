-- 0002: a read horizon that only ledger writers hold back; the writer appends only through the
-- ledger's functions; the registry's settled outcomes and the checkpoints are checked on write;
-- write-ahead intents and the `indeterminate` outcome.
SET LOCAL ROLE reservations_owner;

-- Every transaction that appends to the ledger first joins the ledger's writers: it takes a
-- shared, transaction-level advisory lock (class 0x4c454449, "LEDI", key 0) *before it has a
-- transaction id*, and keeps it until it ends (PostgreSQL releases a transaction's advisory
-- locks after its own xid lock). Readers find the writers in flight in pg_locks (see
-- ledger.visible_horizon). A transaction that already holds an xid without holding the lock
-- would be invisible to them, so it may not append (SQLSTATE RL003). The setting
-- ledger.writing (transaction-local) only spares the chain trigger a second look; the check
-- itself never trusts it.
CREATE FUNCTION ledger.join_writers() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        PERFORM pg_advisory_xact_lock_shared(1279607881, 0);
    ELSIF NOT EXISTS (
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
END
$$;

CREATE OR REPLACE FUNCTION ledger.lock_chain(reservation_sid text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ledger.join_writers();
    PERFORM pg_advisory_xact_lock(1279607879, hashtext(coalesce(reservation_sid, 'rejected_input')));
END
$$;

CREATE OR REPLACE FUNCTION ledger.events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head ledger.chain_heads;
BEGIN
    NEW.chain_key := coalesce(NEW.reservation_sid, 'rejected_input');
    IF current_setting('ledger.writing', true) IS DISTINCT FROM 'on' THEN
        PERFORM ledger.join_writers();
    END IF;
    PERFORM pg_advisory_xact_lock(1279607879, hashtext(NEW.chain_key));
    -- The advisory lock serialises this chain's appends, so no row lock is needed here.
    SELECT * INTO head FROM ledger.chain_heads WHERE chain_key = NEW.chain_key;
    NEW.position := nextval('ledger.events_position_seq');
    NEW.tx_id := pg_current_xact_id();
    NEW.recorded_at := clock_timestamp();
    IF NOT FOUND THEN
        NEW.chain_seq := 1;
        NEW.prev_hash := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        NEW.row_hash := ledger.event_hash(NEW);
        INSERT INTO ledger.chain_heads (chain_key, chain_seq, head_hash, head_position)
        VALUES (NEW.chain_key, NEW.chain_seq, NEW.row_hash, NEW.position);
    ELSE
        NEW.chain_seq := head.chain_seq + 1;
        NEW.prev_hash := head.head_hash;
        NEW.row_hash := ledger.event_hash(NEW);
        UPDATE ledger.chain_heads
           SET chain_seq = NEW.chain_seq, head_hash = NEW.row_hash, head_position = NEW.position
         WHERE chain_key = NEW.chain_key;
    END IF;
    RETURN NEW;
END
$$;

-- The read horizon for a statement whose snapshot is s: readers show the rows whose tx_id is
-- below it. It is the oldest of
--   * s's xmax (no transaction that started after s), and
--   * each transaction in flight at s (its xid in s's xip list) that, in one read of the lock
--     table taken after s, holds the writers' lock (a ledger writer still in flight), and
--   * each transaction in flight at s that no longer holds its own xid lock at that read (it
--     ended since) and whose rows a newer snapshot, taken after that read, shows in the ledger
--     (at READ COMMITTED; at REPEATABLE READ every such transaction counts, rows or not).
-- A transaction in flight at s that still holds its xid lock without the writers' lock never
-- appends (join_writers), whichever database it is in: it does not hold readers back.
-- Why nothing is ever skipped: a row with tx_id x < horizon belongs to a transaction that had
-- its xid before s. Had it been in flight at s, then at the lock read it held both locks (it
-- joined the writers before getting x, and PostgreSQL releases the advisory lock after the xid
-- lock), or only the writers' lock, or none: the first two put the horizon at or below x; in
-- the third it had committed before the newer snapshot, which shows its rows, so again. So it
-- had ended before s, and s shows its rows. Rows that appear later have tx_ids at or above the
-- horizon and sort after every cursor handed out from this read. Call it once per statement,
-- with that statement's pg_current_snapshot(), in a scalar subquery:
-- (SELECT ledger.visible_horizon(pg_current_snapshot())). VOLATILE plpgsql: each statement in
-- it takes a new snapshot at READ COMMITTED.
CREATE FUNCTION ledger.visible_horizon(s pg_snapshot) RETURNS xid8
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon xid8;
    ended xid8[];
BEGIN
    WITH locks AS MATERIALIZED (  -- one read of the lock table
        SELECT l.locktype, l.transactionid, l.virtualtransaction, l.database
          FROM pg_locks l
         WHERE l.granted
           AND ((l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock')
             OR (l.locktype = 'advisory' AND l.classid = 1279607881 AND l.objid = 0 AND l.objsubid = 2))
    ), running AS (
        SELECT (l.transactionid::text)::bigint AS xid32, l.virtualtransaction
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
           (SELECT array_agg(f.x) FROM in_flight f WHERE f.xid32 NOT IN (SELECT xid32 FROM running))
      INTO horizon, ended;
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

-- The writer appends only through the functions below, which run as the owner.
ALTER FUNCTION ledger.record_received(
    uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text, text, integer
) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION ledger.record_step(
    text, uuid, integer, integer, integer, text, integer, text, text, text, text, text, text, integer
) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION ledger.record_transition(
    uuid, text, text, text, text, text, text, text, text, integer, integer, text, integer, text, text, text,
    integer
) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION ledger.record_outcome(uuid, text, integer, integer, text, text, text, integer)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION ledger.record_rejected_input(
    uuid, text, text, text, text, text, jsonb, text, text, text, text, integer
) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION ledger.seal_checkpoint() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE INSERT ON ledger.events, ledger.checkpoints, ledger.checkpoint_heads FROM reservations_writer;
REVOKE INSERT, UPDATE ON ledger.actions, ledger.reservations FROM reservations_writer;
REVOKE EXECUTE ON FUNCTION ledger.settle(ledger.actions, text, integer, integer, text, text, text, integer)
    FROM reservations_writer;
REVOKE ALL ON FUNCTION ledger.join_writers(), ledger.visible_horizon(pg_snapshot) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.visible_horizon(pg_snapshot) TO reservations_reader, reservations_writer;

-- The registry: what was received never changes; attempts and redrives only grow; a redrive is
-- counted only with its redrive row; an outcome is set once and never cleared or changed, a
-- redrive included: the copy runs under a new action_id (SQLSTATE RL001).
CREATE FUNCTION ledger.actions_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.action_id, NEW.action, NEW.workspace_sid, NEW.reservation_sid, NEW.task_sid, NEW.worker_sid,
        NEW.params, NEW.expected_status, NEW.not_after, NEW.correlation_id, NEW.producer, NEW.received_at)
       IS DISTINCT FROM
       (OLD.action_id, OLD.action, OLD.workspace_sid, OLD.reservation_sid, OLD.task_sid, OLD.worker_sid,
        OLD.params, OLD.expected_status, OLD.not_after, OLD.correlation_id, OLD.producer, OLD.received_at)
    THEN
        RAISE EXCEPTION 'ledger.actions: what action % received cannot change', OLD.action_id
            USING ERRCODE = 'RL001';
    END IF;
    IF NEW.attempts < OLD.attempts OR NEW.redrives NOT IN (OLD.redrives, OLD.redrives + 1) THEN
        RAISE EXCEPTION 'ledger.actions: attempts and redrives of action % only grow', OLD.action_id
            USING ERRCODE = 'RL001';
    END IF;
    IF NEW.redrives = OLD.redrives + 1 AND NOT EXISTS (
        SELECT FROM ledger.events e
         WHERE e.action_id = OLD.action_id AND e.kind = 'redrive' AND e.tx_id = pg_current_xact_id()
    ) THEN
        RAISE EXCEPTION 'ledger.actions: action % is redriven only with a redrive row in the ledger',
            OLD.action_id USING ERRCODE = 'RL001';
    END IF;
    IF OLD.outcome IS NOT NULL AND NEW.outcome IS DISTINCT FROM OLD.outcome THEN
        RAISE EXCEPTION 'ledger.actions: the outcome of action % is % and never changes',
            OLD.action_id, OLD.outcome USING ERRCODE = 'RL001';
    END IF;
    IF NEW.outcome IS NOT DISTINCT FROM OLD.outcome AND NEW.outcome_at IS DISTINCT FROM OLD.outcome_at THEN
        RAISE EXCEPTION 'ledger.actions: outcome_at of action % changes only with its outcome', OLD.action_id
            USING ERRCODE = 'RL001';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER actions_guard BEFORE UPDATE ON ledger.actions
    FOR EACH ROW EXECUTE FUNCTION ledger.actions_guard();
CREATE TRIGGER actions_append_only BEFORE DELETE OR TRUNCATE ON ledger.actions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- ledger.chain_heads changes only through the chain trigger (a row trigger fired from it runs at
-- trigger depth 2): a head written by hand would raise false alarms or hide a cut tail.
CREATE FUNCTION ledger.chain_heads_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'ledger.chain_heads is written by the chain trigger only: % refused', TG_OP
            USING ERRCODE = 'RL001';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER chain_heads_guard BEFORE INSERT OR UPDATE OR DELETE ON ledger.chain_heads
    FOR EACH ROW EXECUTE FUNCTION ledger.chain_heads_guard();
CREATE TRIGGER chain_heads_append_only BEFORE TRUNCATE ON ledger.chain_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Checkpoints are checked when written (SQLSTATE RL004): every sealed head is a row of its chain
-- whose hash holds, at or past the head sealed before; a checkpoint follows the previous one
-- and its digest is that of its heads (checked at commit, once its heads are in). The checks run
-- as the owner (a deferred trigger fires after the writer's SECURITY DEFINER call has returned).
CREATE FUNCTION ledger.checkpoint_problem(p_checkpoint_id bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c ledger.checkpoints;
    p ledger.checkpoints;
    keys text[];
    seqs bigint[];
    hashes text[];
    n integer;
BEGIN
    SELECT * INTO c FROM ledger.checkpoints WHERE checkpoint_id = p_checkpoint_id;
    IF NOT FOUND THEN
        RETURN format('checkpoint %s does not exist', p_checkpoint_id);
    END IF;
    SELECT * INTO p FROM ledger.checkpoints WHERE checkpoint_id = p_checkpoint_id - 1;
    IF (p.checkpoint_id IS NULL AND (c.checkpoint_id <> 1 OR c.prev_digest <> '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea))
       OR c.prev_digest <> p.digest OR c.max_position < p.max_position THEN
        RETURN format('checkpoint %s does not follow checkpoint %s', c.checkpoint_id, c.checkpoint_id - 1);
    END IF;
    SELECT coalesce(array_agg(h.chain_key ORDER BY h.chain_key), '{}'),
           coalesce(array_agg(h.chain_seq ORDER BY h.chain_key), '{}'),
           coalesce(array_agg(encode(h.head_hash, 'hex') ORDER BY h.chain_key), '{}'),
           count(*)
      INTO keys, seqs, hashes, n
      FROM ledger.checkpoint_heads h
     WHERE h.checkpoint_id = c.checkpoint_id;
    IF n <> c.chains OR c.digest <> ledger.checkpoint_digest(
        c.prev_digest, c.checkpoint_id, c.max_position, keys, seqs, hashes
    ) THEN
        RETURN format('checkpoint %s does not match its sealed heads', c.checkpoint_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION ledger.checkpoints_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text := ledger.checkpoint_problem(NEW.checkpoint_id);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'RL004';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER checkpoints_check AFTER INSERT ON ledger.checkpoints
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger.checkpoints_check();

CREATE FUNCTION ledger.checkpoint_heads_check() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    SELECT a.checkpoint_id, a.chain_key, a.chain_seq INTO bad
      FROM added a
      LEFT JOIN ledger.events e ON e.chain_key = a.chain_key AND e.chain_seq = a.chain_seq
     WHERE e.position IS NULL OR e.position <> a.head_position OR e.row_hash <> a.head_hash
        OR e.row_hash <> ledger.event_hash(e)
        OR EXISTS (
            SELECT FROM ledger.checkpoint_heads s
             WHERE s.chain_key = a.chain_key AND s.checkpoint_id < a.checkpoint_id AND s.chain_seq > a.chain_seq
        )
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'checkpoint %: the sealed head of chain % (seq %) is not a row of that chain',
            bad.checkpoint_id, bad.chain_key, bad.chain_seq USING ERRCODE = 'RL004';
    END IF;
    SELECT a.checkpoint_id, ledger.checkpoint_problem(a.checkpoint_id) AS problem INTO bad
      FROM (SELECT DISTINCT checkpoint_id FROM added) a
     WHERE ledger.checkpoint_problem(a.checkpoint_id) IS NOT NULL
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', bad.problem USING ERRCODE = 'RL004';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER checkpoint_heads_check AFTER INSERT ON ledger.checkpoint_heads
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION ledger.checkpoint_heads_check();

REVOKE ALL ON FUNCTION ledger.actions_guard(), ledger.chain_heads_guard(), ledger.checkpoint_problem(bigint), ledger.checkpoints_check(),
    ledger.checkpoint_heads_check() FROM PUBLIC;

-- Write-ahead intents and the `indeterminate` outcome.
--
-- Before an update is sent, the run appends an `intent` row: the action, the run (`attempt`), the
-- If-Match ETag it carries (`etag_before`), the status it was sent from (`from_status`), the
-- status it should lead to (`to_status`, when it changes one) and a keyed digest of its arguments
-- (`detail`). A later row of the same action that carries TaskRouter's definite answer (a
-- transition, a 412 conflict, a 4xx or 503 attempt, an outcome) resolves it; an intent without one is an
-- answer that was lost, and the next run resolves it from the reservation's ETag before it may
-- send again (ops/LEDGER.md, "Lost answers"). A redrive no longer clears the original's outcome.

ALTER TABLE ledger.events DROP CONSTRAINT events_kind_check;
ALTER TABLE ledger.events ADD CONSTRAINT events_kind_check CHECK (kind IN (
    'received', 'attempt', 'conflict', 'transition', 'outcome', 'rejected_input', 'redrive', 'intent'
));

ALTER TABLE ledger.events DROP CONSTRAINT events_outcome_check;
ALTER TABLE ledger.events ADD CONSTRAINT events_outcome_check CHECK (outcome IN (
    'applied', 'already_applied', 'invalid_transition', 'expired', 'failed', 'rejected_input',
    'dead_lettered', 'indeterminate'
));

ALTER TABLE ledger.actions DROP CONSTRAINT actions_outcome_check;
ALTER TABLE ledger.actions ADD CONSTRAINT actions_outcome_check CHECK (outcome IN (
    'applied', 'already_applied', 'invalid_transition', 'expired', 'failed', 'rejected_input',
    'dead_lettered', 'indeterminate'
));

-- An attempt, a 412 conflict, an intent, or an operator's redrive of an action.
CREATE OR REPLACE FUNCTION ledger.record_step(
    p_kind text, p_action_id uuid, p_attempt integer, p_http_status integer,
    p_twilio_error_code integer, p_twilio_request_id text, p_duration_ms integer,
    p_from_status text, p_to_status text, p_etag_before text, p_etag_after text,
    p_detail text, p_worker_host text, p_worker_pid integer
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a ledger.actions := ledger.registered(p_action_id);
    pos bigint;
BEGIN
    IF p_kind NOT IN ('attempt', 'conflict', 'redrive', 'intent') THEN
        RAISE EXCEPTION 'record_step records attempts, conflicts, intents and redrives, not %', p_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM ledger.lock_chain(a.reservation_sid);
    INSERT INTO ledger.events (
        kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
        from_status, to_status, etag_before, etag_after, attempt, http_status, twilio_error_code,
        twilio_request_id, duration_ms, worker_host, worker_pid, correlation_id, producer, detail
    ) VALUES (
        p_kind, a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
        p_from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
        p_twilio_error_code, p_twilio_request_id, p_duration_ms, p_worker_host, p_worker_pid,
        a.correlation_id, a.producer, p_detail
    ) RETURNING position INTO pos;
    IF p_kind = 'attempt' THEN
        UPDATE ledger.actions SET attempts = greatest(attempts, coalesce(p_attempt, attempts + 1))
         WHERE action_id = a.action_id;
    ELSIF p_kind = 'redrive' THEN
        UPDATE ledger.actions SET redrives = redrives + 1 WHERE action_id = a.action_id;
    END IF;
    RETURN pos;
END
$$;

-- The action's intent that no definite answer followed, if any: what a run must resolve before it
-- may send again. Reads the writer's own snapshot (it runs under the reservation's lock).
CREATE FUNCTION ledger.pending_intent(p_action_id uuid)
RETURNS TABLE (attempt integer, etag_before text, from_status text, to_status text, recorded_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT i.attempt, i.etag_before, i.from_status, i.to_status, i.recorded_at
      FROM (SELECT e.* FROM ledger.events e
             WHERE e.action_id = p_action_id AND e.kind = 'intent'
             ORDER BY e.position DESC LIMIT 1) AS i
     WHERE NOT EXISTS (
        SELECT FROM ledger.events r
         WHERE r.action_id = p_action_id AND r.position > i.position
           AND (r.kind IN ('transition', 'conflict', 'outcome', 'redrive')
                OR (r.kind = 'attempt' AND (r.http_status BETWEEN 400 AND 499 OR r.http_status = 503)))
     )
$$;
REVOKE ALL ON FUNCTION ledger.pending_intent(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.pending_intent(uuid) TO reservations_writer;
