-- 0012: a leaner ledger row (issue 19: bytes per action), every row as readable as before.
--
-- The chain index held each row's chain key as text (a reservation SID, 35 bytes): an entry of 56
-- bytes, the largest index of the ledger. It now holds ledger.key64(chain_key) (8 bytes, as the
-- task, worker and correlation indexes since 0004) and chain_seq. Every reader of a chain matches
-- the key and the text (a collision costs a row read, never a wrong row): the history of a
-- reservation, verify's head checks, the console's chain check, record_transition's look-up of a
-- reservation's transitions and the seal's check of its heads below.
--
-- An action's facts (action, workspace and task SIDs, correlation id, producer) were repeated on
-- every row of the action, each time copied from its registry entry (ledger.actions), where they
-- never change (actions_guard), and stored on its received row, which the chain covers. Rows
-- appended from now on after the received row leave them out (a transition stores its workspace and
-- task only where they are not the action's); readers (queries.sql: history,
-- transitions_in_chain_order) take them from the registry for every row but received and
-- rejected_input rows (whose action id may be registered by another message). A row written before
-- keeps its copy, which is the registry's (every function wrote it from there): both shapes read
-- alike. The history by correlation id or task finds an action's rows through the registry
-- (actions_correlation or actions_task, then events_action), so events_correlation and events_task
-- keep only the received rows, the rows without an action and the rows written before. The worker
-- SID stays on every row: a worker's history is long (every action it ever took), and is paged
-- through its own index in ledger order.
--
-- A row's reservation SID was stored twice: as reservation_sid and as chain_key, which the chain
-- trigger sets from it (coalesce(reservation_sid, 'rejected_input')). The trigger now stores it
-- once, as the chain key, and readers read reservation_sid as coalesce(reservation_sid,
-- nullif(chain_key, 'rejected_input')): exact for every row, older ones included (a row without a
-- reservation SID is in the 'rejected_input' chain; the literal 'rejected_input' is kept as given).
-- The canonical form is unchanged: a new row is hashed with the columns it stores.
SET LOCAL ROLE reservations_owner;

-- After 0004, which made ledger.key64 and events_chain (a ledger that ran 0004 late runs this
-- after it: tests/ledger/test_partitions.py).
DROP INDEX ledger.events_chain;
CREATE INDEX events_chain ON ledger.events (ledger.key64(chain_key), chain_seq);
CREATE INDEX actions_correlation ON ledger.actions (ledger.key64(correlation_id))
    WHERE correlation_id IS NOT NULL;
CREATE INDEX actions_task ON ledger.actions (ledger.key64(task_sid)) WHERE task_sid IS NOT NULL;

-- An action's, a task's and a correlation id's rows are few (the last two found through the
-- registry since this migration): their indexes need not hold ledger order, a sort of the few
-- rows found gives it (16 bytes less an entry). A worker's history stays in ledger order.
-- events_worker is made again, unchanged, after events_task: PostgreSQL names each partition's
-- index in order of creation, and a fresh ledger's (schemas/ledger.sql) must be named alike.
DROP INDEX ledger.events_action, ledger.events_task, ledger.events_correlation, ledger.events_worker;
CREATE INDEX events_task ON ledger.events (ledger.key64(task_sid)) WHERE task_sid IS NOT NULL;
CREATE INDEX events_worker ON ledger.events (ledger.key64(worker_sid), tx_id, position)
    WHERE worker_sid IS NOT NULL;
CREATE INDEX events_action ON ledger.events (action_id) WHERE action_id IS NOT NULL;
CREATE INDEX events_correlation ON ledger.events (ledger.key64(correlation_id))
    WHERE correlation_id IS NOT NULL;

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

CREATE OR REPLACE FUNCTION ledger.settle(
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

CREATE OR REPLACE FUNCTION ledger.record_step(
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
     WHERE ledger.key64(e.chain_key) = ledger.key64(p_reservation_sid) AND e.chain_key = p_reservation_sid
       AND e.kind = 'transition' AND e.to_status = p_to_status
       AND (src = 'event' OR e.source = 'event')
     ORDER BY e.position
     LIMIT 1;
    IF t_pos IS NULL THEN
        IF src = 'event' AND from_status IS NULL THEN
            SELECT e.to_status INTO from_status
              FROM ledger.events e
             WHERE ledger.key64(e.chain_key) = ledger.key64(p_reservation_sid) AND e.chain_key = p_reservation_sid
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
            twilio_request_id, duration_ms, worker_host, worker_pid, detail, source, trace_id
        ) VALUES (
            'transition', p_action_id,
            nullif(coalesce(p_workspace_sid, a.workspace_sid, r.workspace_sid), a.workspace_sid),
            p_reservation_sid,
            nullif(coalesce(p_task_sid, a.task_sid, r.task_sid), a.task_sid),
            coalesce(p_worker_sid, a.worker_sid, r.worker_sid),
            from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
            p_twilio_request_id, p_duration_ms, p_worker_host, p_worker_pid, p_detail, src, p_trace_id
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

CREATE OR REPLACE FUNCTION ledger.checkpoint_heads_check() RETURNS trigger
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
