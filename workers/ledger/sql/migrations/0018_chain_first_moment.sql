-- 0018: a chain's first moment, so that the write path reads only the months a reservation's
-- chain has rows in (issue 15: the ledger's PostgreSQL work per action; issue 19: the queries
-- prune partitions by time).
--
-- record_transition looks in the reservation's chain for a transition TaskRouter's event already
-- recorded (and, for an event, for the status before it), through events_chain: with no bound
-- on recorded_at that is one index probe in every partition of ledger.events, so an accept cost
-- more each month the ledger kept (`ops/bench_ledger_path.py --history-months 12`: the function's
-- own time 0.92 to 1.29 ms an accept, 0.53 to 0.77 with this migration). The chain's head now
-- keeps the earliest recorded_at among the chain's rows (first_recorded_at, set and kept by the
-- chain trigger, which alone writes heads), and the two look-ups read only from that month on: a
-- reservation lives minutes to days, so one or two partitions. Exact, not a guess: every row of
-- the chain was recorded at or after that moment. A chain begun before this migration has no
-- first moment (NULL, never filled in: that would read the whole ledger here) and is read in
-- every partition, as before. record_transition runs its statements as generic plans
-- (plan_cache_mode): with the bound, PostgreSQL would otherwise plan the look-ups afresh at every
-- call (a custom plan, pruned while planning, but planning itself visits every partition), which
-- cost more than the probes saved; a generic plan is planned once and pruned when it starts (it
-- still locks each partition at each call, a small cost that grows with the months kept).
SET LOCAL ROLE reservations_owner;
-- Adding a nullable column is a change of the catalog only, but it needs ACCESS EXCLUSIVE on
-- chain_heads, which every append reads: wait at most 10 s for it (then nothing changes, and the
-- migration is run again).
SET LOCAL lock_timeout = '10s';

ALTER TABLE ledger.chain_heads ADD COLUMN first_recorded_at timestamptz;
COMMENT ON COLUMN ledger.chain_heads.first_recorded_at IS
    'The earliest recorded_at of the chain''s rows (migration 0018); NULL for a chain begun before.';

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

CREATE OR REPLACE FUNCTION ledger.record_transition(
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
