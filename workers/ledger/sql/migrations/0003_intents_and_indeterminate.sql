-- 0003: write-ahead intents, the `indeterminate` outcome, and outcomes that a redrive no longer
-- clears (the original keeps its outcome; its redrive row links the copy).
--
-- Before an update is sent, the run appends an `intent` row: the action, the run (`attempt`), the
-- If-Match ETag it carries (`etag_before`), the status it was sent from (`from_status`), the
-- status it should lead to (`to_status`, when it changes one) and a digest of its arguments
-- (`detail`). A later row of the same action that carries TaskRouter's definite answer (a
-- transition, a 412 conflict, a 4xx attempt, an outcome) resolves it; an intent without one is an
-- answer that was lost, and the next run resolves it from the reservation's ETag before it may
-- send again (ops/LEDGER.md, "Lost answers").
SET LOCAL ROLE reservations_owner;

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

-- The registry: what was received never changes; attempts and redrives only grow; a redrive
-- is counted only with its redrive row; an outcome is set once and never cleared or changed, a
-- redrive included (the copy runs under a new action_id) (SQLSTATE RL001).
CREATE OR REPLACE FUNCTION ledger.actions_guard() RETURNS trigger
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
                OR (r.kind = 'attempt' AND r.http_status BETWEEN 400 AND 499))
     )
$$;
REVOKE ALL ON FUNCTION ledger.pending_intent(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ledger.pending_intent(uuid) TO reservations_writer;
