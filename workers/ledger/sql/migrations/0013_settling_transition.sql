-- 0013: the transition that settles an action carries its outcome (issue 19: rows per action;
-- issue 15: one insert, one chain step and one hash fewer per applied action).
--
-- An applied action wrote two rows in one transaction: its transition (to_status, ETags, HTTP
-- status, request id) and an 'outcome' row that repeated the action, the reservation, the request
-- id and the run, adding only the word 'applied'. The transition row has an outcome column (NULL
-- until now): it now holds the outcome when the transition is the action's first, so the row that
-- says what the update did also says how the action ended. Readers find an action's outcome as
-- the row whose outcome is set, of kind 'outcome' or 'transition' (the history's --outcome filter
-- and the events_outcome index already read the column, not the kind).
--
-- Unchanged: a transition that TaskRouter's event recorded first (the action's answer found it in
-- the chain) settles the action with an 'outcome' row naming that row, as before; an action that
-- had settled already (a late answer) gets its transition without an outcome; every other outcome
-- (failed, expired, indeterminate, ...) is its own row. Rows written before keep their shape:
-- a transition without an outcome followed by its outcome row. The canonical form (what the chain
-- hashes) always covered the outcome column of every row.
SET LOCAL ROLE reservations_owner;

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
    SELECT e.position INTO t_pos
      FROM ledger.events e
     WHERE ledger.key64(e.chain_key) = ledger.key64(p_reservation_sid) AND e.chain_key = p_reservation_sid
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
