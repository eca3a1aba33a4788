-- The scale loader's statements (workers.testing.scale), named as in workers/ledger/sql/queries.sql.

-- name: position
-- The position of row s (1 .. 2 * per_action) of reservation r: in_flight reservations interleaved,
-- each row of a block of in_flight reservations before the next row of any of them. The same
-- formula as scale.position in Python (per_action is scale.ROWS_PER_ACTION, passed by the loader).
CREATE FUNCTION pg_temp.bench_position(r bigint, s bigint, in_flight bigint, per_action bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (r / in_flight) * in_flight * 2 * per_action + (s - 1) * in_flight + r % in_flight + 1
$$

-- name: generator
-- Row (r, s) of reservation r, s = 1 .. 2 * per_action: action a = (s - 1) / per_action (accept,
-- then complete), step k = (s - 1) % per_action (received, intent, then the row that settles the
-- action), in the shape the ledger writes since migration 0013: an applied action's transition
-- carries its outcome ('applied'), with no outcome row after it. The complete of every hundredth
-- reservation fails (TaskRouter's 400): its third row is an outcome row ('failed', HTTP 400, no
-- statuses, ETag after or source), and the reservation stays accepted. (The worker also records
-- the 400 as an 'attempt' row before that outcome; the loader leaves it out, to keep three rows
-- per action.) Positions interleave in_flight reservations (pg_temp.bench_position); rows from
-- tail_from on get the loading transaction's own xid, the rest an xid below the current one that
-- grows with the position (ledger order = chain order). Each chain is hashed with the ledger's own
-- ledger.event_hash; columns are given by name (jsonb_populate_record), so the function follows the
-- schema the migrations made.
CREATE FUNCTION pg_temp.bench_rows(
    first_res bigint, last_res bigint, lo bigint, hi bigint, tail_from bigint,
    t0 timestamptz, step_us double precision, xid_per_position double precision, in_flight bigint,
    per_action bigint
) RETURNS SETOF ledger.events
LANGUAGE plpgsql AS $$
DECLARE
    e ledger.events;
    prev bytea;
    zero bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    IF per_action <> 3 THEN
        RAISE EXCEPTION 'the generator writes 3 rows per action (received, intent, settling), not %',
            per_action;
    END IF;
    FOR e IN
        SELECT x.*
          FROM generate_series(first_res, last_res) AS r
         CROSS JOIN generate_series(1, 2 * per_action) AS s
         CROSS JOIN LATERAL (
            SELECT pg_temp.bench_position(r, s, in_flight, per_action) AS pos,
                   (s - 1) / per_action AS a, (s - 1) % per_action AS k,
                   -- the complete of every hundredth reservation fails (as load_actions says)
                   r % 100 = 0 AND s > per_action AS failed,
                   'WR' || lpad(to_hex(r), 32, '0') AS sid
         ) AS p
         CROSS JOIN LATERAL jsonb_populate_record(NULL::ledger.events, jsonb_build_object(
            'position', p.pos,
            'tx_id', CASE WHEN p.pos >= tail_from THEN pg_current_xact_id()::text
                          ELSE (3 + floor(p.pos * xid_per_position))::bigint::text END,
            'recorded_at', t0 + make_interval(secs => p.pos * step_us / 1e6),
            'chain_key', p.sid, 'chain_seq', s,
            'kind', CASE p.k WHEN 0 THEN 'received' WHEN 1 THEN 'intent'
                             ELSE CASE WHEN p.failed THEN 'outcome' ELSE 'transition' END END,
            'action_id', md5((r * 2 + p.a)::text)::uuid,
            -- An action's facts on its received row only, as the ledger writes them since 0012.
            'action', CASE WHEN p.k = 0 THEN (ARRAY['accept', 'complete'])[p.a + 1] END,
            'workspace_sid', CASE WHEN p.k = 0 THEN 'WS' || lpad(to_hex(r % 4), 32, '0') END,
            -- reservation_sid: stored as the chain key only, as the chain trigger does since 0012
            'task_sid', CASE WHEN p.k = 0 THEN 'WT' || lpad(to_hex(r), 32, '0') END,
            'worker_sid', 'WK' || lpad(to_hex(r % 5000), 32, '0'),
            -- The intent and the transition name the statuses and ETags; a failed update's outcome
            -- row does not (ledger.settle).
            'from_status', CASE WHEN p.k = 1 OR (p.k = 2 AND NOT p.failed)
                                THEN (ARRAY['pending', 'accepted'])[p.a + 1] END,
            'to_status', CASE WHEN p.k = 1 OR (p.k = 2 AND NOT p.failed)
                              THEN (ARRAY['accepted', 'completed'])[p.a + 1] END,
            'etag_before', CASE WHEN p.k = 1 OR (p.k = 2 AND NOT p.failed) THEN (p.a + 1)::text END,
            'etag_after', CASE WHEN p.k = 2 AND NOT p.failed THEN (p.a + 2)::text END,
            'attempt', CASE WHEN p.k > 0 THEN 1 END,
            'http_status', CASE WHEN p.k = 2 THEN CASE WHEN p.failed THEN 400 ELSE 200 END END,
            'twilio_error_code', CASE WHEN p.k = 2 AND p.failed THEN 20001 END,
            'twilio_request_id', CASE WHEN p.k = 2 THEN 'RQ' || md5(p.pos::text) END,
            'duration_ms', CASE WHEN p.k = 2 AND NOT p.failed THEN 40 + r % 60 END,
            -- The transition that settles an applied action carries its outcome (0013).
            'outcome', CASE WHEN p.k = 2 THEN CASE WHEN p.failed THEN 'failed' ELSE 'applied' END END,
            'worker_host', 'worker-' || r % 4, 'worker_pid', 1000 + r % 64,
            'correlation_id', CASE WHEN p.k = 0 THEN 'corr-' || (r * 2 + p.a) END,
            'producer', CASE WHEN p.k = 0 THEN 'routing' END,
            'params', CASE WHEN p.k = 0 AND p.a = 0 THEN '{"instruction": "accept"}'::jsonb END,
            'detail', CASE WHEN p.k = 1 THEN 'hmac-sha256:' || md5(p.pos::text)
                           WHEN p.k = 2 AND p.failed THEN 'HTTP 400: the reservation cannot be completed' END,
            'source', CASE WHEN p.k = 2 AND NOT p.failed THEN 'action' END,
            'trace_id', md5((r * 2 + p.a)::text || 'trace')
         )) AS x
         ORDER BY r, s
    LOOP
        IF e.chain_seq = 1 THEN
            prev := zero;
        END IF;
        e.prev_hash := prev;
        e.row_hash := ledger.event_hash(e);
        prev := e.row_hash;
        IF e.position > lo AND e.position <= hi THEN
            RETURN NEXT e;
        END IF;
    END LOOP;
END
$$

-- name: load_batch
-- One batch of reservations: their rows in (lo, hi], and their chains' heads, kept as the chain
-- trigger keeps them (the load runs with the guards off).
WITH added AS (
    INSERT INTO ledger.events
    SELECT * FROM pg_temp.bench_rows(%(first)s, %(last)s, %(lo)s, %(hi)s, %(tail_from)s, %(t0)s,
                                     %(step_us)s, %(xid_per_position)s, %(in_flight)s,
                                     %(rows_per_action)s)
     ORDER BY position  -- in time order on disk, as the workers write them
    RETURNING chain_key, chain_seq, row_hash, position, recorded_at
)
INSERT INTO ledger.chain_heads (chain_key, chain_seq, head_hash, head_position, first_recorded_at)
SELECT DISTINCT ON (chain_key) chain_key, chain_seq, row_hash, position,
       min(recorded_at) OVER (PARTITION BY chain_key)
  FROM added ORDER BY chain_key, chain_seq DESC
ON CONFLICT (chain_key) DO UPDATE
   SET chain_seq = excluded.chain_seq, head_hash = excluded.head_hash, head_position = excluded.head_position,
       first_recorded_at = CASE WHEN ledger.chain_heads.first_recorded_at IS NULL THEN NULL
                                ELSE least(ledger.chain_heads.first_recorded_at, excluded.first_recorded_at) END;

-- name: load_actions
-- The registry of the same reservations, its outcomes those of the rows (the complete of every
-- hundredth reservation failed), received and settled when its received and settling rows were
-- recorded (an action's parameters live on its received row).
INSERT INTO ledger.actions (
    action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, correlation_id,
    producer, received_at, attempts, outcome, outcome_at
)
SELECT md5(a::text)::uuid, (ARRAY['accept', 'complete'])[a %% 2 + 1], 'WS' || lpad(to_hex(a / 2 %% 4), 32, '0'),
       'WR' || lpad(to_hex(a / 2), 32, '0'), 'WT' || lpad(to_hex(a / 2), 32, '0'),
       'WK' || lpad(to_hex(a / 2 %% 5000), 32, '0'),
       'corr-' || a, 'routing',
       %(t0)s::timestamptz + make_interval(secs => p.received * %(step_us)s / 1e6), 1,
       CASE WHEN a / 2 %% 100 = 0 AND a %% 2 = 1 THEN 'failed' ELSE 'applied' END,
       %(t0)s::timestamptz + make_interval(secs => p.settled * %(step_us)s / 1e6)
  FROM generate_series(%(first)s::bigint * 2, %(last)s::bigint * 2 + 1) AS a
 CROSS JOIN LATERAL (
    SELECT pg_temp.bench_position(a / 2, a %% 2 * %(rows_per_action)s + 1, %(in_flight)s, %(rows_per_action)s)
               AS received,
           pg_temp.bench_position(a / 2, (a %% 2 + 1) * %(rows_per_action)s, %(in_flight)s, %(rows_per_action)s)
               AS settled
 ) AS p;

-- name: load_projection
-- The projection of the same reservations, as ledger.record_transition keeps it: each one's last
-- transition (the complete's; the accept's where the complete failed), its position and time.
INSERT INTO ledger.reservations (
    reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
)
SELECT 'WR' || lpad(to_hex(r), 32, '0'), 'WS' || lpad(to_hex(r %% 4), 32, '0'), 'WT' || lpad(to_hex(r), 32, '0'),
       'WK' || lpad(to_hex(r %% 5000), 32, '0'),
       CASE WHEN f.failed THEN 'accepted' ELSE 'completed' END, CASE WHEN f.failed THEN '2' ELSE '3' END,
       p.last_pos, %(t0)s::timestamptz + make_interval(secs => p.last_pos * %(step_us)s / 1e6)
  FROM generate_series(%(first)s::bigint, %(last)s) AS r
 CROSS JOIN LATERAL (SELECT r %% 100 = 0 AS failed) AS f
 CROSS JOIN LATERAL (
    SELECT pg_temp.bench_position(
               r, CASE WHEN f.failed THEN 1 ELSE 2 END * %(rows_per_action)s, %(in_flight)s, %(rows_per_action)s
           ) AS last_pos
 ) AS p;
