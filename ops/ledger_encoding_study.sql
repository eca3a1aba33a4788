-- A study, not the ledger: the rows of a ledger database copied into the most compact encoding
-- that keeps every fact exactly, to measure what a change of the row format could save (issue 19:
-- 2,000 bytes per action). `ops/bench_ledger_size.py` runs it on its database after its own
-- figures and prints the total; nothing reads these tables.
--
-- What it changes, each exact for the benchmark's rows (a SID, request or trace id that does not
-- fit keeps its text in a fallback column, NULL otherwise, which costs one bit; the study assumes
-- the shapes the benchmark writes: one SID prefix a column, no reservation_sid stored on a row,
-- action names the registry knows):
--   * SIDs, request ids and trace ids as their 16 raw bytes (two letters and 32 hex digits);
--   * kinds, statuses, outcomes, sources and action names as one-byte codes ("char");
--   * no stored prev_hash (it is the previous row's row_hash in the same chain);
--   * the intent's argument digest as its 32 raw bytes instead of "arguments hmac-sha256:<hex>";
--   * the projection and the chain heads of reservations in one table, one row a reservation;
--   * small counts as smallint; the events' indexes as the ledger has them, built packed full (as
--     `reservations ledger compact` leaves a month); the others built fresh.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS encoding_study CASCADE;
CREATE SCHEMA encoding_study;

-- The 16 raw bytes of a SID (two capitals and 32 lower-case hex digits), else NULL.
CREATE FUNCTION encoding_study.raw(t text) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN t ~ '^[A-Z]{2}[0-9a-f]{32}$' THEN decode(substr(t, 3), 'hex') END
$$;
-- The text of a value raw() cannot hold exactly (NULL when raw() holds it, or it is NULL).
CREATE FUNCTION encoding_study.rest(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN encoding_study.raw(t) IS NULL THEN t END
$$;
-- A one-byte code of a word from a closed list (the list is the column's CHECK).
CREATE FUNCTION encoding_study.code(t text, words text[]) RETURNS "char" LANGUAGE sql IMMUTABLE AS $$
    SELECT chr(64 + array_position(words, t))::"char"
$$;
CREATE FUNCTION encoding_study.key(b bytea) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT ('x' || encode(substr(b, 1, 8), 'hex'))::bit(64)::bigint
$$;

CREATE TABLE encoding_study.events (
    position bigint NOT NULL,
    tx_id xid8 NOT NULL,
    recorded_at timestamptz NOT NULL,
    chain_seq bigint NOT NULL,
    row_hash bytea NOT NULL,
    action_id uuid,
    chain_raw bytea,
    worker_raw bytea,
    task_raw bytea,
    workspace_raw bytea,
    request_raw bytea,
    trace_raw bytea,
    arguments_digest bytea,
    attempt smallint,
    http_status smallint,
    twilio_error_code integer,
    duration_ms integer,
    worker_pid integer,
    kind "char" NOT NULL,
    from_status "char",
    to_status "char",
    outcome "char",
    source "char",
    action "char",
    etag_before text,
    etag_after text,
    worker_host text,
    correlation_id text,
    producer text,
    params jsonb,
    detail text,
    chain_text text,
    worker_text text,
    task_text text,
    workspace_text text,
    request_text text
);

INSERT INTO encoding_study.events
SELECT e.position, e.tx_id, e.recorded_at, e.chain_seq, e.row_hash, e.action_id,
       encoding_study.raw(e.chain_key), encoding_study.raw(e.worker_sid), encoding_study.raw(e.task_sid),
       encoding_study.raw(e.workspace_sid), encoding_study.raw(e.twilio_request_id),
       decode(e.trace_id, 'hex'),
       CASE WHEN e.detail ~ '^arguments hmac-sha256:[0-9a-f]{64}$' THEN decode(right(e.detail, 64), 'hex') END,
       e.attempt, e.http_status, e.twilio_error_code, e.duration_ms, e.worker_pid,
       encoding_study.code(e.kind, ARRAY['received', 'attempt', 'conflict', 'transition', 'outcome',
                                         'rejected_input', 'redrive', 'intent']),
       encoding_study.code(e.from_status, s.words), encoding_study.code(e.to_status, s.words),
       encoding_study.code(e.outcome, ARRAY['applied', 'already_applied', 'invalid_transition', 'expired',
                                            'failed', 'rejected_input', 'dead_lettered', 'indeterminate']),
       encoding_study.code(e.source, ARRAY['action', 'event', 'fetch']),
       encoding_study.code(e.action, a.words),
       e.etag_before, e.etag_after, e.worker_host, e.correlation_id, e.producer, e.params,
       CASE WHEN e.detail ~ '^arguments hmac-sha256:[0-9a-f]{64}$' THEN NULL ELSE e.detail END,
       encoding_study.rest(e.chain_key), encoding_study.rest(e.worker_sid), encoding_study.rest(e.task_sid),
       encoding_study.rest(e.workspace_sid), encoding_study.rest(e.twilio_request_id)
  FROM ledger.events e,
       (SELECT ARRAY['pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping',
                     'completed'] AS words) s,
       (SELECT array_agg(DISTINCT action ORDER BY action) AS words FROM ledger.actions) a
 ORDER BY e.position;

CREATE INDEX ON encoding_study.events (tx_id, position) WITH (fillfactor = 100);
CREATE INDEX ON encoding_study.events (encoding_study.key(chain_raw), chain_seq) WITH (fillfactor = 100);
CREATE INDEX ON encoding_study.events (encoding_study.key(task_raw)) WITH (fillfactor = 100)
    WHERE task_raw IS NOT NULL;
CREATE INDEX ON encoding_study.events (encoding_study.key(worker_raw), tx_id, position)
    WITH (fillfactor = 100) WHERE worker_raw IS NOT NULL;
CREATE INDEX ON encoding_study.events (action_id) WITH (fillfactor = 100) WHERE action_id IS NOT NULL;
CREATE INDEX ON encoding_study.events (ledger.key64(correlation_id)) WITH (fillfactor = 100)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX ON encoding_study.events (outcome, tx_id, position) WITH (fillfactor = 100)
    WHERE outcome IS NOT NULL;
CREATE INDEX ON encoding_study.events USING brin (recorded_at);
CREATE INDEX ON encoding_study.events USING gin (params jsonb_path_ops) WHERE params IS NOT NULL;

CREATE TABLE encoding_study.actions (
    action_id uuid PRIMARY KEY,
    workspace_raw bytea,
    reservation_raw bytea,
    task_raw bytea,
    worker_raw bytea,
    not_after timestamptz,
    received_at timestamptz NOT NULL,
    outcome_at timestamptz,
    attempts smallint NOT NULL,
    redrives smallint NOT NULL,
    action "char",
    expected_status "char",
    outcome "char",
    correlation_id text,
    producer text,
    workspace_text text,
    reservation_text text,
    task_text text,
    worker_text text
);
INSERT INTO encoding_study.actions
SELECT y.action_id, encoding_study.raw(y.workspace_sid), encoding_study.raw(y.reservation_sid),
       encoding_study.raw(y.task_sid), encoding_study.raw(y.worker_sid), y.not_after, y.received_at,
       y.outcome_at, y.attempts, y.redrives,
       encoding_study.code(y.action, a.words), encoding_study.code(y.expected_status, s.words),
       encoding_study.code(y.outcome, ARRAY['applied', 'already_applied', 'invalid_transition', 'expired',
                                            'failed', 'rejected_input', 'dead_lettered', 'indeterminate']),
       y.correlation_id, y.producer, encoding_study.rest(y.workspace_sid),
       encoding_study.rest(y.reservation_sid), encoding_study.rest(y.task_sid), encoding_study.rest(y.worker_sid)
  FROM ledger.actions y,
       (SELECT ARRAY['pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping',
                     'completed'] AS words) s,
       (SELECT array_agg(DISTINCT action ORDER BY action) AS words FROM ledger.actions) a;
CREATE INDEX ON encoding_study.actions (encoding_study.key(reservation_raw));
CREATE INDEX ON encoding_study.actions (ledger.key64(correlation_id)) WHERE correlation_id IS NOT NULL;
CREATE INDEX ON encoding_study.actions (encoding_study.key(task_raw)) WHERE task_raw IS NOT NULL;

-- A reservation's projection and its chain's head, one row.
CREATE TABLE encoding_study.reservations (
    reservation_raw bytea PRIMARY KEY,
    workspace_raw bytea,
    task_raw bytea,
    worker_raw bytea,
    last_position bigint,
    updated_at timestamptz,
    chain_seq bigint NOT NULL,
    head_position bigint NOT NULL,
    head_hash bytea NOT NULL,
    first_recorded_at timestamptz,
    status "char",
    etag text
);
INSERT INTO encoding_study.reservations
SELECT encoding_study.raw(h.chain_key), encoding_study.raw(r.workspace_sid), encoding_study.raw(r.task_sid),
       encoding_study.raw(r.worker_sid), r.last_position, r.updated_at, h.chain_seq, h.head_position,
       h.head_hash, h.first_recorded_at, encoding_study.code(r.status, s.words), r.etag
  FROM ledger.chain_heads h
  LEFT JOIN ledger.reservations r ON r.reservation_sid = h.chain_key,
       (SELECT ARRAY['pending', 'accepted', 'rejected', 'timeout', 'canceled', 'rescinded', 'wrapping',
                     'completed'] AS words) s
 WHERE encoding_study.raw(h.chain_key) IS NOT NULL;
-- The chains that are not a reservation's (rejected_input) keep their text key, and so would a
-- reservation whose SID raw() cannot hold (none in the benchmark's mix).
CREATE TABLE encoding_study.other_chain_heads (LIKE ledger.chain_heads INCLUDING INDEXES);
INSERT INTO encoding_study.other_chain_heads
SELECT * FROM ledger.chain_heads WHERE encoding_study.raw(chain_key) IS NULL;
CREATE TABLE encoding_study.other_reservations (LIKE ledger.reservations INCLUDING INDEXES);
INSERT INTO encoding_study.other_reservations
SELECT * FROM ledger.reservations WHERE encoding_study.raw(reservation_sid) IS NULL;
