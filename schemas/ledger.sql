-- The ledger's schema as the migrations leave it: the reference that tests/ledger/test_migrations.py
-- compares with a database built from workers/ledger/sql/migrations/. Keep it in step with every new migration.
--
-- Run by `reservations migrate` in one transaction, as a role that may create roles (or finds
-- them already created by a DBA) and that is a member of reservations_owner (or a superuser).
-- Every object below is created by, and owned by, reservations_owner.

-- Cluster-wide roles, shared by every database of the cluster: create each only if missing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reservations_owner') THEN
        CREATE ROLE reservations_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reservations_writer') THEN
        CREATE ROLE reservations_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'reservations_reader') THEN
        CREATE ROLE reservations_reader NOLOGIN;
    END IF;
    -- A writer may also read as the reader (e.g. to run `reservations ledger verify`).
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_auth_members m
         WHERE m.roleid = 'reservations_reader'::regrole AND m.member = 'reservations_writer'::regrole
    ) THEN
        GRANT reservations_reader TO reservations_writer;
    END IF;
END
$roles$;

CREATE SCHEMA ledger AUTHORIZATION reservations_owner;
SET LOCAL ROLE reservations_owner;

CREATE TABLE ledger.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Append-only tables refuse, statement by statement (so also TRUNCATE and statements that touch
-- no row), any change to their rows.
CREATE FUNCTION ledger.refuse_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'ledger.% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'RL001';
END
$$;

-- The ledger: one row per thing that happened. Columns from chain_key to row_hash are set by
-- the trigger ledger.events_chain(), whatever the writer sends.
CREATE SEQUENCE ledger.events_position_seq AS bigint;

CREATE TABLE ledger.events (
    position bigint NOT NULL,
    tx_id xid8 NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    chain_key text NOT NULL,
    chain_seq bigint NOT NULL,
    prev_hash bytea NOT NULL,
    row_hash bytea NOT NULL,
    kind text NOT NULL CONSTRAINT events_kind_check CHECK (
        kind IN (
            'received', 'attempt', 'conflict', 'transition', 'outcome', 'rejected_input', 'redrive',
            'intent'
        )
    ),
    action_id uuid,
    action text,
    workspace_sid text,
    reservation_sid text,
    task_sid text,
    worker_sid text,
    from_status text CONSTRAINT events_from_status_check CHECK (from_status IN (
        'pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping', 'completed'
    )),
    to_status text CONSTRAINT events_to_status_check CHECK (to_status IN (
        'pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping', 'completed'
    )),
    etag_before text,
    etag_after text,
    attempt integer,
    http_status integer,
    twilio_error_code integer,
    twilio_request_id text,
    duration_ms integer,
    outcome text CONSTRAINT events_outcome_check CHECK (outcome IN (
        'applied', 'already_applied', 'invalid_transition', 'expired', 'failed', 'rejected_input',
        'dead_lettered', 'indeterminate'
    )),
    worker_host text,
    worker_pid integer,
    correlation_id text,
    producer text,
    params jsonb,
    detail text,
    -- Where the ledger learnt a transition: 'action' (our update's answer), 'event' (TaskRouter told
    -- us), 'fetch' (we noticed it on a fetch); only transitions have one, rows before 0003 none.
    source text CONSTRAINT events_source_check CHECK (source IN ('action', 'event', 'fetch')),
    -- The W3C trace id of the work that wrote the row.
    trace_id text CONSTRAINT events_trace_id_check CHECK (
        trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> '00000000000000000000000000000000'
    ),
    CONSTRAINT events_source_kind_check CHECK (source IS NULL OR kind = 'transition')
) PARTITION BY RANGE (recorded_at);
ALTER SEQUENCE ledger.events_position_seq OWNED BY ledger.events.position;

-- Partitions (migration 0004): one a month of recorded_at (UTC), named events_YYYY_MM, made ahead by
-- ledger.create_events_partitions(); the DEFAULT partition keeps any row no partition takes.
CREATE TABLE ledger.events_default PARTITION OF ledger.events DEFAULT;

-- Guard one partition of ledger.events as the parent is guarded (idempotent).
CREATE FUNCTION ledger.guard_events_partition(p_partition regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_trigger t WHERE t.tgrelid = p_partition AND t.tgname = 'events_append_only'
    ) THEN
        EXECUTE format(
            'CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON %s'
            ' FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change()',
            p_partition
        );
    END IF;
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', p_partition);
    EXECUTE format('GRANT SELECT ON %s TO reservations_writer, reservations_reader', p_partition);
END
$$;

SELECT ledger.guard_events_partition('ledger.events_default');

-- Make sure partitions of p_months month(s) each cover the month of p_from and the p_ahead
-- months after it (UTC months; each named events_YYYY_MM after its first month); returns the
-- partitions it made. A month already covered is left alone; a month whose rows went to the
-- DEFAULT partition (no partition existed) is left there, reported by a warning: the default
-- partition is append-only like the rest, and its rows verify like any other.
CREATE FUNCTION ledger.create_events_partitions(
    p_ahead integer DEFAULT 3, p_months integer DEFAULT 1, p_from timestamptz DEFAULT now()
) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_month timestamptz := date_trunc('month', p_from AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    v_stop timestamptz;
    v_upper timestamptz;
    v_covered timestamptz;
    v_next timestamptz;
    v_name text;
BEGIN
    IF p_ahead < 0 OR p_months < 1 THEN
        RAISE EXCEPTION 'partitions: ahead must be 0 or more and months 1 or more (got %, %)', p_ahead, p_months
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_stop := (v_month AT TIME ZONE 'UTC' + make_interval(months => p_ahead + 1)) AT TIME ZONE 'UTC';
    WHILE v_month < v_stop LOOP
        SELECT b.upper INTO v_covered FROM ledger.events_partition_bounds() b
         WHERE b.lower <= v_month AND v_month < b.upper;
        IF v_covered IS NOT NULL THEN
            v_month := v_covered;
            CONTINUE;
        END IF;
        SELECT min(b.lower) INTO v_next FROM ledger.events_partition_bounds() b WHERE b.lower > v_month;
        v_upper := least(
            (v_month AT TIME ZONE 'UTC' + make_interval(months => p_months)) AT TIME ZONE 'UTC', v_next
        );
        v_name := 'events_' || to_char(v_month AT TIME ZONE 'UTC', 'YYYY_MM');
        IF EXISTS (SELECT FROM ledger.events_default d WHERE d.recorded_at >= v_month AND d.recorded_at < v_upper) THEN
            RAISE WARNING 'ledger.events: rows from % to % are in the DEFAULT partition (no partition existed '
                'when they were written); they stay there and no partition is made for them', v_month, v_upper;
        ELSIF to_regclass('ledger.' || quote_ident(v_name)) IS NOT NULL THEN
            RAISE EXCEPTION 'ledger.%: a table of that name exists but is not a partition of ledger.events'
                ' (a detached month?): it is left alone', v_name
                USING ERRCODE = 'RL005';
        ELSE
            EXECUTE format(
                'CREATE TABLE ledger.%I (LIKE ledger.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', v_name
            );
            EXECUTE format(
                'ALTER TABLE ledger.events ATTACH PARTITION ledger.%I FOR VALUES FROM (%L) TO (%L)',
                v_name, v_month, v_upper
            );
            PERFORM ledger.guard_events_partition(('ledger.' || quote_ident(v_name))::regclass);
            RETURN NEXT v_name;
        END IF;
        v_month := v_upper;
    END LOOP;
END
$$;

-- The range of each partition of ledger.events but the default one.
CREATE FUNCTION ledger.events_partition_bounds()
RETURNS TABLE (partition_name text, lower timestamptz, upper timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.relname::text, m[1]::timestamptz, m[2]::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      CROSS JOIN LATERAL regexp_match(
          pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)'
      ) AS m
     WHERE i.inhparent = 'ledger.events'::regclass AND m IS NOT NULL
$$;

SELECT ledger.create_events_partitions(3, 1);

-- A 64-bit key of a text value (the first 16 hex digits of its MD5), for the indexes of the
-- task, worker and correlation histories: 8 bytes where the value takes 35, an index entry of 36
-- bytes instead of 68. Readers look up key64(column) = key64(value) AND column = value, so a
-- collision only costs a row read and dropped. MD5 because it never changes across releases.
CREATE FUNCTION ledger.key64(value text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN ('x' || left(md5(value), 16))::bit(64)::bigint;

-- Ledger order is (tx_id, position); every history query filters on one column and pages in it.
-- A filter by workspace walks ledger order (a contact centre has a handful of workspaces).
CREATE INDEX events_ledger_order ON ledger.events (tx_id, position);
-- Each chain in chain order: verify, the console's chain check, sealed heads, and a reservation's
-- history (its rows are its chain; a few rows to sort into ledger order). On the chain key's
-- 64-bit key (migration 0012): an entry of 24 bytes instead of 56; readers match
-- ledger.key64(chain_key) and chain_key, so a collision costs a row read, never a wrong row.
CREATE INDEX events_chain ON ledger.events (ledger.key64(chain_key), chain_seq);
-- An action's, a task's and a correlation id's rows are few (0012: the last two through the
-- registry, on the row only for received rows, rows of no action and rows written before 0012):
-- their indexes find them, a sort puts them in ledger order. A worker's rows are many: its
-- index is in ledger order, for paging.
CREATE INDEX events_task ON ledger.events (ledger.key64(task_sid)) WHERE task_sid IS NOT NULL;
CREATE INDEX events_worker ON ledger.events (ledger.key64(worker_sid), tx_id, position)
    WHERE worker_sid IS NOT NULL;
CREATE INDEX events_action ON ledger.events (action_id) WHERE action_id IS NOT NULL;
CREATE INDEX events_correlation ON ledger.events (ledger.key64(correlation_id))
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_outcome ON ledger.events (outcome, tx_id, position) WHERE outcome IS NOT NULL;
-- recorded_at grows with position (the database clock at insert), so a BRIN index is enough.
CREATE INDEX events_recorded_at ON ledger.events USING brin (recorded_at);
CREATE INDEX events_params ON ledger.events USING gin (params jsonb_path_ops) WHERE params IS NOT NULL;

-- The head of each hash chain: its last sequence number, hash and position. A chain whose tail
-- was cut no longer ends where its head says.
CREATE TABLE ledger.chain_heads (
    chain_key text PRIMARY KEY,
    chain_seq bigint NOT NULL,
    head_hash bytea NOT NULL,
    head_position bigint NOT NULL,
    -- The earliest recorded_at of the chain's rows, so that look-ups in a chain read only the
    -- months it has rows in (migration 0018); NULL for a chain begun before.
    first_recorded_at timestamptz
);
COMMENT ON COLUMN ledger.chain_heads.first_recorded_at IS
    'The earliest recorded_at of the chain''s rows (migration 0018); NULL for a chain begun before.';

-- The canonical serialisation of a ledger row: the one definition that the chain trigger and
-- `reservations ledger verify` both hash. It is the text form of a row value (PostgreSQL's record
-- output: fields separated by commas, NULL as nothing, any field with a delimiter, quote or
-- space double-quoted with its quotes and backslashes doubled), which is unambiguous and does
-- not depend on session settings: the time is microseconds since the epoch, jsonb's text form is
-- deterministic (keys sorted by length, then bytes). The leading 1 is the format's version.
-- Changing this function breaks every existing chain: add a version 2 instead.
-- (plpgsql rather than SQL: a SQL function over a whole row is not inlined and costs ten times more.)
CREATE FUNCTION ledger.event_canonical(e ledger.events) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF e.source IS NULL AND e.trace_id IS NULL THEN
        RETURN ROW(
            1,
            e.position, e.tx_id, e.chain_key, e.chain_seq,
            (extract(epoch FROM e.recorded_at) * 1000000)::bigint,
            e.kind, e.action_id, e.action,
            e.workspace_sid, e.reservation_sid, e.task_sid, e.worker_sid,
            e.from_status, e.to_status, e.etag_before, e.etag_after,
            e.attempt, e.http_status, e.twilio_error_code, e.twilio_request_id, e.duration_ms,
            e.outcome, e.worker_host, e.worker_pid, e.correlation_id, e.producer, e.params, e.detail
        )::text;
    END IF;
    RETURN ROW(
        2,
        e.position, e.tx_id, e.chain_key, e.chain_seq,
        (extract(epoch FROM e.recorded_at) * 1000000)::bigint,
        e.kind, e.action_id, e.action,
        e.workspace_sid, e.reservation_sid, e.task_sid, e.worker_sid,
        e.from_status, e.to_status, e.etag_before, e.etag_after,
        e.attempt, e.http_status, e.twilio_error_code, e.twilio_request_id, e.duration_ms,
        e.outcome, e.worker_host, e.worker_pid, e.correlation_id, e.producer, e.params, e.detail,
        e.source, e.trace_id
    )::text;
END
$$;

-- row_hash = sha256(prev_hash || canonical text); the first row of a chain follows 32 zero bytes.
CREATE FUNCTION ledger.event_hash(e ledger.events) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(e.prev_hash || convert_to(ledger.event_canonical(e), 'UTF8'));
END
$$;

-- A reservation's statuses in the order its life goes through them: each status is entered at
-- most once (the state machine has no way back), so a transition whose status ranks below the
-- projection's was learnt late and does not move it.
CREATE FUNCTION ledger.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE status WHEN 'pending' THEN 0 WHEN 'accepted' THEN 1 WHEN 'wrapping' THEN 2 ELSE 3 END;

-- Every transaction that appends to the ledger first joins the ledger's writers: it takes a
-- shared, transaction-level advisory lock (class 0x4c454449, "LEDI", key 0) *before it has a
-- transaction id*, and keeps it until it ends (PostgreSQL releases a transaction's advisory
-- locks after its own xid lock). Readers find the writers in flight in pg_locks (see
-- ledger.visible_horizon). A transaction that already holds an xid without holding the lock
-- would be invisible to them, so it may not append (SQLSTATE RL003). The setting
-- ledger.writing (transaction-local) only spares the chain trigger a second look; the check
-- itself never trusts it. The mark ledger.joined (0006) names this backend and this transaction:
-- an append that finds its own transaction's mark has joined, and skips the read of pg_locks.
CREATE FUNCTION ledger.join_writers() RETURNS void
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

-- The advisory lock that serialises the appends to one chain (class 0x4c454447, "LEDG"),
-- taken (after joining the writers) before the transaction's first write: it also makes chain
-- order agree with ledger order.
CREATE FUNCTION ledger.lock_chain(reservation_sid text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ledger.join_writers();
    PERFORM pg_advisory_xact_lock(1279607879, hashtext(coalesce(reservation_sid, 'rejected_input')));
END
$$;

CREATE FUNCTION ledger.events_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head ledger.chain_heads;
BEGIN
    IF NEW.recorded_at < statement_timestamp() - interval '1 minute'
       OR NEW.recorded_at > clock_timestamp() + interval '1 minute' THEN
        RAISE EXCEPTION 'ledger.events: recorded_at is the database clock at insert, not %', NEW.recorded_at
            USING ERRCODE = 'RL001';
    END IF;
    NEW.chain_key := coalesce(NEW.reservation_sid, 'rejected_input');
    -- A reservation's rows are its chain: its SID is stored once, as the chain key (migration
    -- 0012); readers read reservation_sid as coalesce(reservation_sid, nullif(chain_key,
    -- 'rejected_input')), which gives every row, older ones included, its SID exactly.
    IF NEW.reservation_sid <> 'rejected_input' THEN
        NEW.reservation_sid := NULL;
    END IF;
    IF current_setting('ledger.writing', true) IS DISTINCT FROM 'on' THEN
        PERFORM ledger.join_writers();
    END IF;
    PERFORM pg_advisory_xact_lock(1279607879, hashtext(NEW.chain_key));
    -- The advisory lock serialises this chain's appends, so no row lock is needed here, and
    -- chain_seq is unique in its chain (no unique index can say so across partitions).
    SELECT * INTO head FROM ledger.chain_heads WHERE chain_key = NEW.chain_key;
    NEW.position := nextval('ledger.events_position_seq');
    NEW.tx_id := pg_current_xact_id();
    IF NOT FOUND THEN
        NEW.chain_seq := 1;
        NEW.prev_hash := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
        NEW.row_hash := ledger.event_hash(NEW);
        INSERT INTO ledger.chain_heads (chain_key, chain_seq, head_hash, head_position, first_recorded_at)
        VALUES (NEW.chain_key, NEW.chain_seq, NEW.row_hash, NEW.position, NEW.recorded_at);
    ELSE
        NEW.chain_seq := head.chain_seq + 1;
        NEW.prev_hash := head.head_hash;
        NEW.row_hash := ledger.event_hash(NEW);
        -- A row's recorded_at is taken before it waits for the chain's lock, so a row appended
        -- later may be recorded earlier than the chain's first: keep the earlier. NULL (a chain
        -- begun before migration 0018) stays NULL: its first moment is not known (least() would
        -- take the new row's, which is not).
        UPDATE ledger.chain_heads
           SET chain_seq = NEW.chain_seq, head_hash = NEW.row_hash, head_position = NEW.position,
               first_recorded_at = CASE WHEN first_recorded_at <= NEW.recorded_at THEN first_recorded_at
                                        WHEN first_recorded_at IS NULL THEN NULL
                                        ELSE NEW.recorded_at END
         WHERE chain_key = NEW.chain_key;
    END IF;
    RETURN NEW;
END
$$;

-- A row trigger on the partitioned table is cloned onto every partition, one made later too.
CREATE TRIGGER events_chain BEFORE INSERT ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.events_chain();

-- Append-only: statement-level on the partitioned table (TRUNCATE, statements that touch no
-- row) and on each partition (a statement may name a partition directly; statement triggers
-- are not cloned, so ledger.guard_events_partition adds it), and row-level, which every
-- partition inherits whoever made it.
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER events_append_only_row BEFORE UPDATE OR DELETE ON ledger.events
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();


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
-- it takes a new snapshot at READ COMMITTED. Since 0011 it reads no more than it needs: nothing
-- in flight at s, no read at all; the backends of this database only when a transaction seen
-- in the lock table is ending, and then the lock table once more.
CREATE FUNCTION ledger.visible_horizon(s pg_snapshot) RETURNS xid8
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

-- The action registry: action_id is the idempotency key. Its parameters are those of its
-- 'received' (or 'rejected_input') row in ledger.events, stored there only (migration 0004).
CREATE TABLE ledger.actions (
    action_id uuid PRIMARY KEY,
    action text,
    workspace_sid text,
    reservation_sid text,
    task_sid text,
    worker_sid text,
    expected_status text,
    not_after timestamptz,
    correlation_id text,
    producer text,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL DEFAULT 0,
    outcome text CHECK (outcome IN (
        'applied', 'already_applied', 'invalid_transition', 'expired', 'failed', 'rejected_input',
        'dead_lettered', 'indeterminate'
    )),
    outcome_at timestamptz,
    redrives integer NOT NULL DEFAULT 0
);
-- A reservation's actions (replay redrive --reservation), on a 64-bit key of its SID (0017).
CREATE INDEX actions_reservation ON ledger.actions (ledger.key64(reservation_sid));
-- The history by correlation id or task: an action's rows after its received row do not repeat
-- them (migration 0012); they are found through the registry (and events_action).
CREATE INDEX actions_correlation ON ledger.actions (ledger.key64(correlation_id))
    WHERE correlation_id IS NOT NULL;
CREATE INDEX actions_task ON ledger.actions (ledger.key64(task_sid)) WHERE task_sid IS NOT NULL;

-- An action's parameters: those of its 'received' (or 'rejected_input') row, where they are
-- stored once (migration 0004). For the registry's readers.
CREATE FUNCTION ledger.action_params(p_action_id uuid) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.params FROM ledger.events e
     WHERE e.action_id = p_action_id AND e.kind IN ('received', 'rejected_input')
     ORDER BY e.position
     LIMIT 1
$$;

-- The projection: each reservation's current status and ETag, rebuilt from the ledger at will.
CREATE TABLE ledger.reservations (
    reservation_sid text PRIMARY KEY,
    workspace_sid text,
    task_sid text,
    worker_sid text,
    status text NOT NULL CHECK (status IN (
        'pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping', 'completed'
    )),
    etag text,
    last_position bigint NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Global checkpoints: the chain heads sealed since the previous checkpoint, hashed together and
-- chained, so that a removed chain (or a chain cut before its sealed head) is detected.
CREATE TABLE ledger.checkpoints (
    checkpoint_id bigint PRIMARY KEY,
    taken_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    max_position bigint NOT NULL,
    chains integer NOT NULL,
    prev_digest bytea NOT NULL,
    digest bytea NOT NULL,
    -- The read horizon of the seal's snapshot (0005): every row it did not see lies at or above.
    horizon xid8
);

CREATE TABLE ledger.checkpoint_heads (
    checkpoint_id bigint NOT NULL REFERENCES ledger.checkpoints,
    chain_key text NOT NULL,
    chain_seq bigint NOT NULL,
    head_hash bytea NOT NULL,
    head_position bigint NOT NULL,
    PRIMARY KEY (chain_key, checkpoint_id)
);

CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER checkpoint_heads_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.checkpoint_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- The checkpoint digest: the previous digest, then this checkpoint's id, its ledger horizon and
-- its sealed heads (sorted by chain key), as canonical jsonb text.
CREATE FUNCTION ledger.checkpoint_digest(
    prev_digest bytea, checkpoint_id bigint, max_position bigint,
    chain_keys text[], chain_seqs bigint[], head_hashes text[]
) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN sha256(prev_digest || convert_to(
    jsonb_build_array(1, checkpoint_id, max_position, chain_keys, chain_seqs, head_hashes)::text, 'UTF8'
));

-- Seal the heads that moved since the last checkpoint (and the new chains) into a new checkpoint.
CREATE FUNCTION ledger.seal_checkpoint()
RETURNS TABLE (checkpoint_id bigint, chains integer, max_position bigint, digest bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev ledger.checkpoints;
    new_id bigint;
    keys text[];
    seqs bigint[];
    positions bigint[];
    hashes text[];
    top bigint;
    seen xid8;
    new_digest bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(1279607880, 0);
    SELECT * INTO prev FROM ledger.checkpoints c ORDER BY c.checkpoint_id DESC LIMIT 1;
    new_id := coalesce(prev.checkpoint_id, 0) + 1;
    -- One statement, one snapshot: the heads, the top position and the horizon agree.
    SELECT coalesce(array_agg(m.chain_key), '{}'), coalesce(array_agg(m.chain_seq), '{}'),
           coalesce(array_agg(m.head_position), '{}'), coalesce(array_agg(encode(m.head_hash, 'hex')), '{}'),
           (SELECT coalesce(max(a.head_position), 0) FROM ledger.chain_heads a),
           (SELECT ledger.visible_horizon(pg_current_snapshot()))
      INTO keys, seqs, positions, hashes, top, seen
      FROM (
        SELECT h.chain_key, h.chain_seq, h.head_position, h.head_hash
          FROM ledger.chain_heads h
         WHERE NOT EXISTS (
            SELECT FROM ledger.checkpoint_heads s WHERE s.chain_key = h.chain_key AND s.chain_seq = h.chain_seq
         )
         ORDER BY h.chain_key
      ) AS m;
    top := greatest(top, coalesce(prev.max_position, 0));
    new_digest := ledger.checkpoint_digest(
        coalesce(prev.digest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
        new_id, top, keys, seqs, hashes
    );
    INSERT INTO ledger.checkpoints (checkpoint_id, max_position, chains, prev_digest, digest, horizon)
    VALUES (
        new_id, top, cardinality(keys),
        coalesce(prev.digest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
        new_digest, seen
    );
    INSERT INTO ledger.checkpoint_heads (checkpoint_id, chain_key, chain_seq, head_hash, head_position)
    SELECT new_id, k, q, decode(x, 'hex'), p FROM unnest(keys, seqs, hashes, positions) AS u(k, q, x, p);
    RETURN QUERY SELECT new_id, cardinality(keys), top, new_digest;
END
$$;

-- The write operations. Each is one transaction's worth of work, called in autocommit: it takes
-- the chain's advisory lock before its first write (see ledger.lock_chain), appends, and keeps
-- the registry and the projection in step. SQLSTATE RL002: the action was never received.

-- Register an action; a second receipt of the same action_id changes nothing and returns false.
CREATE FUNCTION ledger.record_received(
    p_action_id uuid, p_action text, p_workspace_sid text, p_reservation_sid text,
    p_task_sid text, p_worker_sid text, p_params jsonb, p_expected_status text,
    p_not_after timestamptz, p_correlation_id text, p_producer text,
    p_worker_host text, p_worker_pid integer, p_trace_id text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM ledger.lock_chain(p_reservation_sid);
    INSERT INTO ledger.actions (
        action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
        expected_status, not_after, correlation_id, producer
    ) VALUES (
        p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid, p_worker_sid,
        p_expected_status, p_not_after, p_correlation_id, p_producer
    ) ON CONFLICT (action_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO ledger.events (
        kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
        worker_host, worker_pid, correlation_id, producer, params, trace_id
    ) VALUES (
        'received', p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid, p_worker_sid,
        p_worker_host, p_worker_pid, p_correlation_id, p_producer, p_params, p_trace_id
    );
    RETURN true;
END
$$;

-- Settle an action's outcome (the first outcome wins) and append its outcome row. Internal.
CREATE FUNCTION ledger.settle(
    a ledger.actions, p_outcome text, p_http_status integer, p_twilio_error_code integer,
    p_twilio_request_id text, p_detail text, p_worker_host text, p_worker_pid integer,
    p_trace_id text
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    pos bigint;
BEGIN
    UPDATE ledger.actions SET outcome = p_outcome, outcome_at = clock_timestamp()
     WHERE action_id = a.action_id AND outcome IS NULL;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The action's facts (action, workspace, task, correlation id, producer) are its registry
    -- entry's and its received row's (migration 0012): readers take them from the registry.
    INSERT INTO ledger.events (
        kind, action_id, reservation_sid, task_sid, worker_sid, outcome,
        attempt, http_status, twilio_error_code, twilio_request_id, worker_host, worker_pid,
        detail, trace_id
    ) VALUES (
        'outcome', a.action_id, a.reservation_sid, NULL, a.worker_sid,
        p_outcome, nullif(a.attempts, 0), p_http_status, p_twilio_error_code, p_twilio_request_id,
        p_worker_host, p_worker_pid, p_detail, p_trace_id
    ) RETURNING position INTO pos;
    RETURN pos;
END
$$;

CREATE FUNCTION ledger.registered(p_action_id uuid) RETURNS ledger.actions
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    a ledger.actions;
BEGIN
    SELECT * INTO a FROM ledger.actions WHERE action_id = p_action_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no action % was recorded as received', p_action_id USING ERRCODE = 'RL002';
    END IF;
    RETURN a;
END
$$;

-- An attempt, a 412 conflict, an intent (ahead of an update), or an operator's redrive of an action.
CREATE FUNCTION ledger.record_step(
    p_kind text, p_action_id uuid, p_attempt integer, p_http_status integer,
    p_twilio_error_code integer, p_twilio_request_id text, p_duration_ms integer,
    p_from_status text, p_to_status text, p_etag_before text, p_etag_after text,
    p_detail text, p_worker_host text, p_worker_pid integer, p_trace_id text DEFAULT NULL
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
    -- The action's facts are its registry entry's (migration 0012), as in ledger.settle.
    INSERT INTO ledger.events (
        kind, action_id, reservation_sid, task_sid, worker_sid,
        from_status, to_status, etag_before, etag_after, attempt, http_status, twilio_error_code,
        twilio_request_id, duration_ms, worker_host, worker_pid, detail, trace_id
    ) VALUES (
        p_kind, a.action_id, a.reservation_sid, NULL, a.worker_sid,
        p_from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
        p_twilio_error_code, p_twilio_request_id, p_duration_ms, p_worker_host, p_worker_pid,
        p_detail, p_trace_id
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

-- A transition, the projection and (optionally) the action's outcome, in one transaction.
CREATE FUNCTION ledger.record_transition(
    p_action_id uuid, p_reservation_sid text, p_workspace_sid text, p_task_sid text,
    p_worker_sid text, p_from_status text, p_to_status text, p_etag_before text, p_etag_after text,
    p_attempt integer, p_http_status integer, p_twilio_request_id text, p_duration_ms integer,
    p_outcome text, p_detail text, p_worker_host text, p_worker_pid integer,
    p_source text DEFAULT NULL, p_trace_id text DEFAULT NULL
) RETURNS TABLE (transition_position bigint, outcome_position bigint, outcome text, appended boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    a ledger.actions;
    r ledger.reservations;
    src text := coalesce(p_source, CASE WHEN p_action_id IS NULL THEN 'fetch' ELSE 'action' END);
    from_status text := p_from_status;
    t_pos bigint;
    t_at timestamptz;
    head ledger.chain_heads;
    since timestamptz;
    o_pos bigint;
    o_detail text := p_detail;
    settles boolean := false;
BEGIN
    PERFORM ledger.lock_chain(p_reservation_sid);
    IF p_action_id IS NOT NULL THEN
        a := ledger.registered(p_action_id);
        IF a.reservation_sid IS DISTINCT FROM p_reservation_sid THEN
            RAISE EXCEPTION 'action % is for reservation %, not %', p_action_id, a.reservation_sid,
                p_reservation_sid USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    SELECT * INTO r FROM ledger.reservations WHERE reservation_sid = p_reservation_sid;
    -- Every row of the chain was recorded at or after its first moment (migration 0018): the
    -- look-ups below read only the partitions from that month on. No head: the chain has no row
    -- yet. A head without it (a chain begun before 0018): every partition, as before.
    SELECT * INTO head FROM ledger.chain_heads h WHERE h.chain_key = p_reservation_sid;
    since := CASE WHEN head.chain_key IS NULL THEN 'infinity'
                  ELSE coalesce(head.first_recorded_at, '-infinity') END;
    SELECT e.position INTO t_pos
      FROM ledger.events e
     WHERE ledger.key64(e.chain_key) = ledger.key64(p_reservation_sid) AND e.chain_key = p_reservation_sid
       AND e.recorded_at >= since
       AND e.kind = 'transition' AND e.to_status = p_to_status
       AND (src = 'event' OR e.source = 'event')
     ORDER BY e.position
     LIMIT 1;
    IF t_pos IS NULL THEN
        -- The action's own transition settles it in its own row (migration 0013), unless the
        -- action has an outcome already: then the row is appended without one, as before.
        IF p_outcome IS NOT NULL AND p_action_id IS NOT NULL THEN
            UPDATE ledger.actions y SET outcome = p_outcome, outcome_at = clock_timestamp()
             WHERE y.action_id = p_action_id AND y.outcome IS NULL;
            settles := FOUND;
        END IF;
        IF src = 'event' AND from_status IS NULL THEN
            SELECT e.to_status INTO from_status
              FROM ledger.events e
             WHERE ledger.key64(e.chain_key) = ledger.key64(p_reservation_sid) AND e.chain_key = p_reservation_sid
               AND e.recorded_at >= since
               AND e.kind = 'transition'
               AND ledger.status_rank(e.to_status) < ledger.status_rank(p_to_status)
             ORDER BY ledger.status_rank(e.to_status) DESC, e.position DESC
             LIMIT 1;
        END IF;
        -- An action's facts are its registry entry's (migration 0012): the workspace and task are
        -- stored only where they are not the action's, and readers fill the rest from the registry.
        INSERT INTO ledger.events (
            kind, action_id, workspace_sid, reservation_sid, task_sid, worker_sid,
            from_status, to_status, etag_before, etag_after, attempt, http_status,
            twilio_request_id, duration_ms, outcome, worker_host, worker_pid, detail, source, trace_id
        ) VALUES (
            'transition', p_action_id,
            nullif(coalesce(p_workspace_sid, a.workspace_sid, r.workspace_sid), a.workspace_sid),
            p_reservation_sid,
            nullif(coalesce(p_task_sid, a.task_sid, r.task_sid), a.task_sid),
            coalesce(p_worker_sid, a.worker_sid, r.worker_sid),
            from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
            p_twilio_request_id, p_duration_ms, CASE WHEN settles THEN p_outcome END, p_worker_host,
            p_worker_pid, p_detail, src, p_trace_id
        ) RETURNING position, recorded_at INTO t_pos, t_at;
        IF settles THEN
            o_pos := t_pos;
        END IF;
        -- The chain lock is held, so nobody else can create or change this reservation's row.
        IF r.reservation_sid IS NULL THEN
            INSERT INTO ledger.reservations (
                reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
            ) VALUES (
                p_reservation_sid, coalesce(p_workspace_sid, a.workspace_sid),
                coalesce(p_task_sid, a.task_sid), coalesce(p_worker_sid, a.worker_sid),
                p_to_status, p_etag_after, t_pos, t_at
            );
        ELSIF ledger.status_rank(p_to_status) >= ledger.status_rank(r.status) THEN
            UPDATE ledger.reservations SET
                workspace_sid = coalesce(p_workspace_sid, a.workspace_sid, r.workspace_sid),
                task_sid = coalesce(p_task_sid, a.task_sid, r.task_sid),
                worker_sid = coalesce(p_worker_sid, a.worker_sid, r.worker_sid),
                status = p_to_status, etag = p_etag_after, last_position = t_pos, updated_at = t_at
             WHERE reservation_sid = p_reservation_sid;
        END IF;
    ELSIF p_outcome IS NOT NULL AND p_action_id IS NOT NULL THEN
        -- The transition is a row of TaskRouter's event already: the outcome gets a row of its own.
        o_detail := concat_ws('; ', p_detail, format('the transition is the row at position %s', t_pos));
        o_pos := ledger.settle(
            a, p_outcome, p_http_status, NULL, p_twilio_request_id, o_detail, p_worker_host, p_worker_pid,
            p_trace_id
        );
    END IF;
    RETURN QUERY SELECT t_pos, o_pos,
        CASE WHEN settles THEN p_outcome
             ELSE (SELECT y.outcome FROM ledger.actions y WHERE y.action_id = p_action_id) END,
        t_at IS NOT NULL;
END
$$;

-- An action's outcome without a transition: already_applied, invalid_transition, expired,
-- failed, dead_lettered. Returns the outcome row's position (NULL when the action had already
-- settled) and the action's outcome, which is the first one recorded.
CREATE FUNCTION ledger.record_outcome(
    p_action_id uuid, p_outcome text, p_http_status integer, p_twilio_error_code integer,
    p_twilio_request_id text, p_detail text, p_worker_host text, p_worker_pid integer,
    p_trace_id text DEFAULT NULL
) RETURNS TABLE (outcome_position bigint, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a ledger.actions := ledger.registered(p_action_id);
    o_pos bigint;
BEGIN
    PERFORM ledger.lock_chain(a.reservation_sid);
    o_pos := ledger.settle(
        a, p_outcome, p_http_status, p_twilio_error_code, p_twilio_request_id, p_detail,
        p_worker_host, p_worker_pid, p_trace_id
    );
    RETURN QUERY SELECT o_pos, (SELECT y.outcome FROM ledger.actions y WHERE y.action_id = p_action_id);
END
$$;

-- A message that broke the schema. Its reservation_sid is given only when it is a valid SID
-- (else the row joins the 'rejected_input' chain); a valid action_id is registered as settled,
-- so that a redelivery of the same message is recognised.
CREATE FUNCTION ledger.record_rejected_input(
    p_action_id uuid, p_action text, p_workspace_sid text, p_reservation_sid text,
    p_task_sid text, p_worker_sid text, p_params jsonb, p_correlation_id text, p_producer text,
    p_detail text, p_worker_host text, p_worker_pid integer, p_trace_id text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pos bigint;
BEGIN
    PERFORM ledger.lock_chain(p_reservation_sid);
    INSERT INTO ledger.events (
        kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, outcome,
        worker_host, worker_pid, correlation_id, producer, params, detail, trace_id
    ) VALUES (
        'rejected_input', p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid,
        p_worker_sid, 'rejected_input', p_worker_host, p_worker_pid, p_correlation_id, p_producer,
        p_params, p_detail, p_trace_id
    ) RETURNING position INTO pos;
    IF p_action_id IS NOT NULL THEN
        INSERT INTO ledger.actions (
            action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
            correlation_id, producer, outcome, outcome_at
        ) VALUES (
            p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid, p_worker_sid,
            p_correlation_id, p_producer, 'rejected_input', clock_timestamp()
        ) ON CONFLICT (action_id) DO NOTHING;
    END IF;
    RETURN pos;
END
$$;

-- The registry: what was received never changes; attempts and redrives only grow; a redrive is
-- counted only with its redrive row; an outcome is set once and never cleared or changed, a
-- redrive included: the copy runs under a new action_id (SQLSTATE RL001).
CREATE FUNCTION ledger.actions_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (NEW.action_id, NEW.action, NEW.workspace_sid, NEW.reservation_sid, NEW.task_sid, NEW.worker_sid,
        NEW.expected_status, NEW.not_after, NEW.correlation_id, NEW.producer, NEW.received_at)
       IS DISTINCT FROM
       (OLD.action_id, OLD.action, OLD.workspace_sid, OLD.reservation_sid, OLD.task_sid, OLD.worker_sid,
        OLD.expected_status, OLD.not_after, OLD.correlation_id, OLD.producer, OLD.received_at)
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
    problem text;
    sealed bigint;
BEGIN
    SELECT a.checkpoint_id, a.chain_key, a.chain_seq INTO bad
      FROM added a
      LEFT JOIN ledger.events e
        ON ledger.key64(e.chain_key) = ledger.key64(a.chain_key) AND e.chain_key = a.chain_key
       AND e.chain_seq = a.chain_seq
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
    FOR sealed IN SELECT DISTINCT a.checkpoint_id FROM added a LOOP
        problem := ledger.checkpoint_problem(sealed);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION '%', problem USING ERRCODE = 'RL004';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER checkpoint_heads_check AFTER INSERT ON ledger.checkpoint_heads
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION ledger.checkpoint_heads_check();

-- Privileges: the writer appends only through the record_* functions (SECURITY DEFINER, run as
-- the owner) and seals checkpoints; the writer and the reader select.
REVOKE ALL ON ALL TABLES IN SCHEMA ledger FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA ledger FROM PUBLIC;
GRANT USAGE ON SCHEMA ledger TO reservations_writer, reservations_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA ledger TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.event_canonical(ledger.events), ledger.event_hash(ledger.events)
    TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.lock_chain(text) TO reservations_writer;
GRANT EXECUTE ON FUNCTION ledger.events_partition_bounds() TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.key64(text) TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.action_params(uuid) TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.status_rank(text) TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION
    ledger.record_received(
        uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text, text, integer, text
    ),
    ledger.registered(uuid),
    ledger.record_step(
        text, uuid, integer, integer, integer, text, integer, text, text, text, text, text, text, integer, text
    ),
    ledger.record_transition(
        uuid, text, text, text, text, text, text, text, text, integer, integer, text, integer, text, text,
        text, integer, text, text
    ),
    ledger.record_outcome(uuid, text, integer, integer, text, text, text, integer, text),
    ledger.record_rejected_input(uuid, text, text, text, text, text, jsonb, text, text, text, text, integer, text),
    ledger.seal_checkpoint()
    TO reservations_writer;
GRANT EXECUTE ON FUNCTION
    ledger.checkpoint_digest(bytea, bigint, bigint, text[], bigint[], text[]) TO reservations_reader, reservations_writer;
GRANT EXECUTE ON FUNCTION ledger.visible_horizon(pg_snapshot) TO reservations_reader, reservations_writer;

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

-- 0007: the account-wide TaskRouter concurrency governor (workers.taskrouter.governor).
-- The fleet's budget of TaskRouter requests in flight, moved by workers.core.governor (additive
-- increase, multiplicative decrease on 429). One row per account; heartbeats lock it to take turns.
CREATE TABLE ledger.taskrouter_budget (
    account_sid  text PRIMARY KEY CHECK (account_sid ~ '^AC[0-9a-fA-F]{32}$'),
    current      double precision NOT NULL CHECK (current >= 1),
    updated_at   timestamptz NOT NULL,
    decreased_at timestamptz,
    hold_until   timestamptz NOT NULL
);

-- A worker process's share of the budget: what it asked for (demand), what it may have in flight
-- (granted, never less than what it had in flight when it renewed), until expires_at. A process
-- that dies stops renewing: its lease expires and the next heartbeat of any other deletes it.
CREATE TABLE ledger.taskrouter_leases (
    account_sid text NOT NULL REFERENCES ledger.taskrouter_budget (account_sid),
    holder      text NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    demand      integer NOT NULL CHECK (demand >= 0),
    granted     integer NOT NULL CHECK (granted >= 0),
    in_flight   integer NOT NULL CHECK (in_flight >= 0),
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (account_sid, holder)
);

-- The workers' role renews and drops leases and moves the budget; nothing else of the ledger
-- changes for it. Operators read both (the runbook has the query).
REVOKE ALL ON ledger.taskrouter_budget, ledger.taskrouter_leases FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON ledger.taskrouter_budget TO reservations_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.taskrouter_leases TO reservations_writer;
GRANT SELECT ON ledger.taskrouter_budget, ledger.taskrouter_leases TO reservations_reader;

-- Months whose partitions were exported, checked against the database and detached by
-- `reservations ledger archive`: the export's digest and row count, the checkpoint that sealed
-- them, and each chain's last archived row (where verification picks the chain up again).
CREATE TABLE ledger.archives (
    month date PRIMARY KEY CHECK (month = date_trunc('month', month)),
    checkpoint_id bigint NOT NULL REFERENCES ledger.checkpoints,
    row_count bigint NOT NULL,
    first_position bigint,
    last_position bigint,
    file_name text NOT NULL,
    sha256 bytea NOT NULL,
    manifest jsonb NOT NULL,
    -- Whether the month's partition was detached (a ledger that is not partitioned keeps the rows).
    detached boolean NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER archives_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.archives
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Each chain's last archived row of each archived month: where verification picks the chain up
-- again once the month is no longer in ledger.events.
CREATE TABLE ledger.archive_heads (
    month date NOT NULL REFERENCES ledger.archives,
    chain_key text NOT NULL,
    chain_seq bigint NOT NULL,
    row_hash bytea NOT NULL,
    head_position bigint NOT NULL,
    PRIMARY KEY (chain_key, month)
);

CREATE TRIGGER archive_heads_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.archive_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

REVOKE ALL ON ledger.archives, ledger.archive_heads FROM PUBLIC;
GRANT SELECT ON ledger.archives, ledger.archive_heads TO reservations_writer, reservations_reader;

-- 0014: every ledger row as the application reads it (queries.sql, row_columns), for SQL written by
-- hand: an action's facts from its registry entry, the reservation SID from the chain key (0012).
-- security_invoker: it grants nothing ledger.events and ledger.actions do not; not a barrier: it
-- hides no row. A view over a join is not updatable, and nobody is granted to write it.
CREATE VIEW ledger.rows WITH (security_invoker = true) AS
SELECT e.position, e.tx_id, e.recorded_at, e.chain_key, e.chain_seq, e.prev_hash, e.row_hash, e.kind,
       e.action_id,
       CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.action ELSE coalesce(e.action, a.action) END
           AS action,
       CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.workspace_sid
            ELSE coalesce(e.workspace_sid, a.workspace_sid) END AS workspace_sid,
       coalesce(e.reservation_sid, nullif(e.chain_key, 'rejected_input')) AS reservation_sid,
       CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.task_sid
            ELSE coalesce(e.task_sid, a.task_sid) END AS task_sid,
       e.worker_sid, e.from_status, e.to_status, e.etag_before,
       e.etag_after, e.attempt, e.http_status, e.twilio_error_code, e.twilio_request_id, e.duration_ms,
       e.outcome, e.worker_host, e.worker_pid,
       CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.correlation_id
            ELSE coalesce(e.correlation_id, a.correlation_id) END AS correlation_id,
       CASE WHEN e.kind IN ('received', 'rejected_input') THEN e.producer
            ELSE coalesce(e.producer, a.producer) END AS producer,
       e.params, e.detail, e.source, e.trace_id
  FROM ledger.events e
  LEFT JOIN ledger.actions a ON a.action_id = e.action_id;

COMMENT ON VIEW ledger.rows IS
    'Every ledger row as the application reads it (migration 0014): an action''s facts from its '
    'registry entry, the reservation SID from the chain key (0012). Hand SQL reads this, not ledger.events.';

REVOKE ALL ON ledger.rows FROM PUBLIC;
GRANT SELECT ON ledger.rows TO reservations_writer, reservations_reader;
