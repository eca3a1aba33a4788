-- 0004: ledger.events partitioned by month of recorded_at, and leaner.
--
-- The ledger grows for years; one table and its indexes would grow with it. ledger.events becomes
-- a table partitioned by RANGE (recorded_at), one partition a month by default, each named
-- ledger.events_YYYY_MM (UTC) so that old months can be sealed, exported and detached one by one.
-- ledger.create_events_partitions() makes them ahead of time (`reservations migrate` and
-- `reservations ledger partitions`); a DEFAULT partition keeps any row that no partition takes,
-- so no write is ever lost for want of one.
--
-- What a partitioned table cannot enforce across partitions, the ledger enforces itself:
-- (chain_key, chain_seq) is unique because the chain trigger hands out chain_seq from
-- ledger.chain_heads under the chain's advisory lock, and position from its sequence. The
-- primary key on position and the workspace index go (no audit query needs them), and a
-- reservation's history reads the chain's index (its rows are its chain) instead of an index of
-- its own; the plan tests in tests/audit/test_plans.py prove every index that stays.
--
-- recorded_at is set by the column's default (the database clock, as before) before the row is
-- routed to its partition: a BEFORE trigger may not move a row to another partition, so the
-- chain trigger now refuses a recorded_at that this statement's clock did not give instead of
-- overwriting it.
--
-- Existing rows are copied as they are (chain fields included: the trigger is created after the
-- copy), so every chain verifies as before; the canonical form does not change.
SET LOCAL ROLE reservations_owner;

ALTER SEQUENCE ledger.events_position_seq OWNED BY NONE;
-- The old table's row type goes with it: the functions over it are made again below.
DROP FUNCTION ledger.event_hash(ledger.events);
DROP FUNCTION ledger.event_canonical(ledger.events);
ALTER TABLE ledger.events RENAME TO events_before_0004;

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
    source text CONSTRAINT events_source_check CHECK (source IN ('action', 'event', 'fetch')),
    trace_id text CONSTRAINT events_trace_id_check CHECK (
        trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> '00000000000000000000000000000000'
    ),
    CONSTRAINT events_source_kind_check CHECK (source IS NULL OR kind = 'transition')
) PARTITION BY RANGE (recorded_at);

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

-- The months of the rows written so far and the next three, then the rows as they are (chain
-- fields included: the chain trigger is made after the copy).
SELECT ledger.create_events_partitions(
           ((extract(year FROM n) - extract(year FROM f)) * 12 + extract(month FROM n) - extract(month FROM f))::integer + 3,
           1, f AT TIME ZONE 'UTC'
       )
  FROM (SELECT coalesce(min(recorded_at), now()) AT TIME ZONE 'UTC' AS f, now() AT TIME ZONE 'UTC' AS n
          FROM ledger.events_before_0004) AS first_row;

INSERT INTO ledger.events SELECT * FROM ledger.events_before_0004 ORDER BY position;
DROP TABLE ledger.events_before_0004;
ALTER SEQUENCE ledger.events_position_seq OWNED BY ledger.events.position;

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
-- history (its rows are its chain; a few rows to sort into ledger order).
CREATE INDEX events_chain ON ledger.events (chain_key, chain_seq);
CREATE INDEX events_task ON ledger.events (ledger.key64(task_sid), tx_id, position) WHERE task_sid IS NOT NULL;
CREATE INDEX events_worker ON ledger.events (ledger.key64(worker_sid), tx_id, position)
    WHERE worker_sid IS NOT NULL;
CREATE INDEX events_action ON ledger.events (action_id, tx_id, position) WHERE action_id IS NOT NULL;
CREATE INDEX events_correlation ON ledger.events (ledger.key64(correlation_id), tx_id, position)
    WHERE correlation_id IS NOT NULL;
-- Migration 0009's index, made again where 0009 ran before this one (0009 makes it otherwise).
DO $outcome$
BEGIN
    IF EXISTS (SELECT FROM ledger.schema_migrations WHERE version = 9) THEN
        CREATE INDEX events_outcome ON ledger.events (outcome, tx_id, position) WHERE outcome IS NOT NULL;
    END IF;
END
$outcome$;
-- recorded_at grows with position (the database clock at insert), so a BRIN index is enough.
CREATE INDEX events_recorded_at ON ledger.events USING brin (recorded_at);
CREATE INDEX events_params ON ledger.events USING gin (params jsonb_path_ops) WHERE params IS NOT NULL;

-- The canonical serialisation, unchanged (see migration 0003), over the new row type.
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

CREATE FUNCTION ledger.event_hash(e ledger.events) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    RETURN sha256(e.prev_hash || convert_to(ledger.event_canonical(e), 'UTF8'));
END
$$;

-- The chain trigger as before, but recorded_at comes from the column's default (the row is routed
-- by it before this trigger runs, and may not move): a value this statement's clock could not
-- have given is refused (SQLSTATE RL001).
CREATE OR REPLACE FUNCTION ledger.events_chain() RETURNS trigger
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


-- A reservation's rows are its chain: record_transition finds its transitions through the chain's
-- index (there is no index on reservation_sid alone any more).
CREATE OR REPLACE FUNCTION ledger.record_transition(
    p_action_id uuid, p_reservation_sid text, p_workspace_sid text, p_task_sid text,
    p_worker_sid text, p_from_status text, p_to_status text, p_etag_before text, p_etag_after text,
    p_attempt integer, p_http_status integer, p_twilio_request_id text, p_duration_ms integer,
    p_outcome text, p_detail text, p_worker_host text, p_worker_pid integer,
    p_source text DEFAULT NULL, p_trace_id text DEFAULT NULL
) RETURNS TABLE (transition_position bigint, outcome_position bigint, outcome text, appended boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a ledger.actions;
    r ledger.reservations;
    src text := coalesce(p_source, CASE WHEN p_action_id IS NULL THEN 'fetch' ELSE 'action' END);
    from_status text := p_from_status;
    t_pos bigint;
    t_at timestamptz;
    o_pos bigint;
    o_detail text := p_detail;
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
    SELECT e.position INTO t_pos
      FROM ledger.events e
     WHERE e.chain_key = p_reservation_sid AND e.reservation_sid = p_reservation_sid
       AND e.kind = 'transition' AND e.to_status = p_to_status
       AND (src = 'event' OR e.source = 'event')
     ORDER BY e.position
     LIMIT 1;
    IF t_pos IS NULL THEN
        IF src = 'event' AND from_status IS NULL THEN
            SELECT e.to_status INTO from_status
              FROM ledger.events e
             WHERE e.chain_key = p_reservation_sid AND e.reservation_sid = p_reservation_sid
               AND e.kind = 'transition'
               AND ledger.status_rank(e.to_status) < ledger.status_rank(p_to_status)
             ORDER BY ledger.status_rank(e.to_status) DESC, e.position DESC
             LIMIT 1;
        END IF;
        INSERT INTO ledger.events (
            kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
            from_status, to_status, etag_before, etag_after, attempt, http_status,
            twilio_request_id, duration_ms, worker_host, worker_pid, correlation_id, producer, detail,
            source, trace_id
        ) VALUES (
            'transition', p_action_id, a.action,
            coalesce(p_workspace_sid, a.workspace_sid, r.workspace_sid), p_reservation_sid,
            coalesce(p_task_sid, a.task_sid, r.task_sid), coalesce(p_worker_sid, a.worker_sid, r.worker_sid),
            from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
            p_twilio_request_id, p_duration_ms, p_worker_host, p_worker_pid, a.correlation_id, a.producer,
            p_detail, src, p_trace_id
        ) RETURNING position, recorded_at INTO t_pos, t_at;
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
    ELSE
        o_detail := concat_ws('; ', p_detail, format('the transition is the row at position %s', t_pos));
    END IF;
    IF p_outcome IS NOT NULL AND p_action_id IS NOT NULL THEN
        o_pos := ledger.settle(
            a, p_outcome, p_http_status, NULL, p_twilio_request_id, o_detail, p_worker_host, p_worker_pid,
            p_trace_id
        );
    END IF;
    RETURN QUERY SELECT t_pos, o_pos, (SELECT y.outcome FROM ledger.actions y WHERE y.action_id = p_action_id),
        t_at IS NOT NULL;
END
$$;

-- An action's parameters are stored once, on its 'received' (or 'rejected_input') row, which the
-- hash chain covers; the registry's copy goes, and readers take them from that row.
ALTER TABLE ledger.actions DROP COLUMN params;

CREATE OR REPLACE FUNCTION ledger.record_received(
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

CREATE OR REPLACE FUNCTION ledger.record_rejected_input(
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

CREATE OR REPLACE FUNCTION ledger.actions_guard() RETURNS trigger
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

REVOKE ALL ON ledger.events FROM PUBLIC;
GRANT SELECT ON ledger.events TO reservations_writer, reservations_reader;
REVOKE ALL ON FUNCTION ledger.event_canonical(ledger.events), ledger.event_hash(ledger.events),
    ledger.guard_events_partition(regclass), ledger.create_events_partitions(integer, integer, timestamptz),
    ledger.events_partition_bounds() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.event_canonical(ledger.events), ledger.event_hash(ledger.events)
    TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION ledger.events_partition_bounds() TO reservations_writer, reservations_reader;
REVOKE ALL ON FUNCTION ledger.key64(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.key64(text) TO reservations_writer, reservations_reader;
REVOKE ALL ON FUNCTION ledger.action_params(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.action_params(uuid) TO reservations_writer, reservations_reader;
