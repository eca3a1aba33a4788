-- 0003: where the ledger learnt each transition (`source`) and the trace each row belongs to
-- (`trace_id`), both under the hash chain; a transition learnt twice is one row, and a
-- transition learnt late never moves the projection backwards.
SET LOCAL ROLE reservations_owner;

-- source: 'action' (our update's answer), 'event' (TaskRouter told us: an Event Callback, an
-- Event Streams delivery or a reconcile run), 'fetch' (we noticed it on a fetch). Only
-- transitions have one; rows written before 0003 have none.
-- trace_id: the W3C trace id (32 lowercase hex digits, not all zero) of the work that wrote it.
ALTER TABLE ledger.events
    ADD COLUMN source text,
    ADD COLUMN trace_id text,
    ADD CONSTRAINT events_source_check CHECK (source IN ('action', 'event', 'fetch')),
    ADD CONSTRAINT events_source_kind_check CHECK (source IS NULL OR kind = 'transition'),
    ADD CONSTRAINT events_trace_id_check CHECK (
        trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> '00000000000000000000000000000000'
    );

-- The canonical serialisation, version 2: a row with neither source nor trace_id keeps exactly
-- version 1's text (every chain written before 0003 still verifies); any other row is the same
-- fields led by 2 and followed by source and trace_id. Clearing both on a version 2 row changes
-- its text to version 1's, so that too breaks its hash.
CREATE OR REPLACE FUNCTION ledger.event_canonical(e ledger.events) RETURNS text
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

-- A reservation's statuses in the order its life goes through them: each status is entered at
-- most once (the state machine has no way back), so a transition whose status ranks below the
-- projection's was learnt late and does not move it.
CREATE FUNCTION ledger.status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE status WHEN 'pending' THEN 0 WHEN 'accepted' THEN 1 WHEN 'wrapping' THEN 2 ELSE 3 END;

-- The write functions take the row's trace_id (and a transition its source): each is dropped
-- and created again with the new parameters last, defaulting to NULL.
DROP FUNCTION ledger.record_received(
    uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text, text, integer
);
DROP FUNCTION ledger.record_step(
    text, uuid, integer, integer, integer, text, integer, text, text, text, text, text, text, integer
);
DROP FUNCTION ledger.record_transition(
    uuid, text, text, text, text, text, text, text, text, integer, integer, text, integer, text, text, text,
    integer
);
DROP FUNCTION ledger.record_outcome(uuid, text, integer, integer, text, text, text, integer);
DROP FUNCTION ledger.record_rejected_input(
    uuid, text, text, text, text, text, jsonb, text, text, text, text, integer
);
DROP FUNCTION ledger.settle(ledger.actions, text, integer, integer, text, text, text, integer);

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
        action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, params,
        expected_status, not_after, correlation_id, producer
    ) VALUES (
        p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid, p_worker_sid, p_params,
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
    INSERT INTO ledger.events (
        kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, outcome,
        attempt, http_status, twilio_error_code, twilio_request_id, worker_host, worker_pid,
        correlation_id, producer, detail, trace_id
    ) VALUES (
        'outcome', a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
        p_outcome, nullif(a.attempts, 0), p_http_status, p_twilio_error_code, p_twilio_request_id,
        p_worker_host, p_worker_pid, a.correlation_id, a.producer, p_detail, p_trace_id
    ) RETURNING position INTO pos;
    RETURN pos;
END
$$;

-- An attempt, a 412 conflict, an intent, or an operator's redrive of an action.
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
    INSERT INTO ledger.events (
        kind, action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid,
        from_status, to_status, etag_before, etag_after, attempt, http_status, twilio_error_code,
        twilio_request_id, duration_ms, worker_host, worker_pid, correlation_id, producer, detail, trace_id
    ) VALUES (
        p_kind, a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
        p_from_status, p_to_status, p_etag_before, p_etag_after, p_attempt, p_http_status,
        p_twilio_error_code, p_twilio_request_id, p_duration_ms, p_worker_host, p_worker_pid,
        a.correlation_id, a.producer, p_detail, p_trace_id
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
--
-- One row per transition: a reservation enters each status at most once, so a transition that
-- TaskRouter's event reports and the ledger already holds (from our answer, a fetch or the same
-- event delivered again), or that our answer or a fetch reports after its event was recorded,
-- is not appended again: `appended` is false and transition_position is the row that holds it
-- (an action's outcome row then names it). An event's transition without from_status follows the
-- highest status recorded below it. The projection moves only forwards (ledger.status_rank); an
-- event's transition carries no ETag, so the projection's ETag becomes unknown (stale): the next
-- action on the reservation fetches first.
CREATE FUNCTION ledger.record_transition(
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
     WHERE e.reservation_sid = p_reservation_sid AND e.kind = 'transition' AND e.to_status = p_to_status
       AND (src = 'event' OR e.source = 'event')
     ORDER BY e.position
     LIMIT 1;
    IF t_pos IS NULL THEN
        IF src = 'event' AND from_status IS NULL THEN
            SELECT e.to_status INTO from_status
              FROM ledger.events e
             WHERE e.reservation_sid = p_reservation_sid AND e.kind = 'transition'
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

-- An action's outcome without a transition: already_applied, invalid_transition, expired,
-- failed, dead_lettered, indeterminate. Returns the outcome row's position (NULL when the action
-- had already settled) and the action's outcome, which is the first one recorded.
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
            action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, params,
            correlation_id, producer, outcome, outcome_at
        ) VALUES (
            p_action_id, p_action, p_workspace_sid, p_reservation_sid, p_task_sid, p_worker_sid,
            p_params, p_correlation_id, p_producer, 'rejected_input', clock_timestamp()
        ) ON CONFLICT (action_id) DO NOTHING;
    END IF;
    RETURN pos;
END
$$;

-- Privileges: as before, the writer appends only through these functions; settle stays internal.
REVOKE ALL ON FUNCTION
    ledger.status_rank(text),
    ledger.record_received(
        uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text, text, integer, text
    ),
    ledger.settle(ledger.actions, text, integer, integer, text, text, text, integer, text),
    ledger.record_step(
        text, uuid, integer, integer, integer, text, integer, text, text, text, text, text, text, integer, text
    ),
    ledger.record_transition(
        uuid, text, text, text, text, text, text, text, text, integer, integer, text, integer, text, text,
        text, integer, text, text
    ),
    ledger.record_outcome(uuid, text, integer, integer, text, text, text, integer, text),
    ledger.record_rejected_input(uuid, text, text, text, text, text, jsonb, text, text, text, text, integer, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.status_rank(text) TO reservations_writer, reservations_reader;
GRANT EXECUTE ON FUNCTION
    ledger.record_received(
        uuid, text, text, text, text, text, jsonb, text, timestamptz, text, text, text, integer, text
    ),
    ledger.record_step(
        text, uuid, integer, integer, integer, text, integer, text, text, text, text, text, text, integer, text
    ),
    ledger.record_transition(
        uuid, text, text, text, text, text, text, text, text, integer, integer, text, integer, text, text,
        text, integer, text, text
    ),
    ledger.record_outcome(uuid, text, integer, integer, text, text, text, integer, text),
    ledger.record_rejected_input(uuid, text, text, text, text, text, jsonb, text, text, text, text, integer, text)
    TO reservations_writer;
