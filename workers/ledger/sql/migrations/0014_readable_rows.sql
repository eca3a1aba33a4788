-- 0014: ledger.rows, every ledger row as the application reads it, for SQL written by hand.
--
-- Since 0012 a row of ledger.events stores an action's facts (action, workspace and task SIDs,
-- correlation id, producer) on the action's received row only, and its reservation SID as its
-- chain key only. The application's readers fill them back in (queries.sql, row_columns), but an
-- auditor's or operator's own SQL against ledger.events (WHERE task_sid = ..., WHERE
-- reservation_sid = ...) silently missed rows and saw NULLs. ledger.rows is ledger.events with
-- its registry entry (ledger.actions) joined: the same columns in the same order as ledger.events,
-- each read exactly as row_columns reads it (tests/ledger/test_readable_rows.py compares the two
-- on rows written before and after 0012). Hand SQL reads ledger.rows, not ledger.events.
--
-- security_invoker: reading the view is reading ledger.events and ledger.actions as the caller,
-- so it grants nothing those tables do not (a role whose SELECT on them is revoked cannot read
-- the ledger through the owner's rights). Not security_barrier: the view hides no row, so there
-- is nothing to guard, and a barrier would keep a filter that is not leakproof, such as
-- ledger.key64(chain_key) = ..., from reaching the chain index. The reader and the writer (a
-- member of the reader) may SELECT it; nobody may write through it: a view over a join is not
-- automatically updatable, and no role is granted INSERT, UPDATE or DELETE on it.
SET LOCAL ROLE reservations_owner;

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
