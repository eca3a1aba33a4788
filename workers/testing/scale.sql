-- The scale loader's statements (workers.testing.scale), named as in workers/ledger/sql/queries.sql.

-- name: generator
-- Row (r, s) of reservation r, s = 1..8: action a = (s - 1) / 4 (accept, then complete), step
-- k = (s - 1) % 4 (received, intent, transition, outcome). Positions interleave in_flight
-- reservations; rows from tail_from on get the loading transaction's own xid, the rest an xid
-- below the current one that grows with the position (ledger order = chain order). Each chain is
-- hashed with the ledger's own ledger.event_hash; columns are given by name
-- (jsonb_populate_record), so the function follows the schema the migrations made.
CREATE FUNCTION pg_temp.bench_rows(
    first_res bigint, last_res bigint, lo bigint, hi bigint, tail_from bigint,
    t0 timestamptz, step_us double precision, xid_per_position double precision, in_flight bigint
) RETURNS SETOF ledger.events
LANGUAGE plpgsql AS $$
DECLARE
    e ledger.events;
    prev bytea;
    zero bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR e IN
        SELECT x.*
          FROM generate_series(first_res, last_res) AS r
         CROSS JOIN generate_series(1, 8) AS s
         CROSS JOIN LATERAL (
            SELECT (r / in_flight) * in_flight * 8 + (s - 1) * in_flight + r % in_flight + 1 AS pos,
                   (s - 1) / 4 AS a, (s - 1) % 4 AS k, 'WR' || lpad(to_hex(r), 32, '0') AS sid
         ) AS p
         CROSS JOIN LATERAL jsonb_populate_record(NULL::ledger.events, jsonb_build_object(
            'position', p.pos,
            'tx_id', CASE WHEN p.pos >= tail_from THEN pg_current_xact_id()::text
                          ELSE (3 + floor(p.pos * xid_per_position))::bigint::text END,
            'recorded_at', t0 + make_interval(secs => p.pos * step_us / 1e6),
            'chain_key', p.sid, 'chain_seq', s,
            'kind', (ARRAY['received', 'intent', 'transition', 'outcome'])[p.k + 1],
            'action_id', md5((r * 2 + p.a)::text)::uuid,
            -- An action's facts on its received row only, as the ledger writes them since 0012.
            'action', CASE WHEN p.k = 0 THEN (ARRAY['accept', 'complete'])[p.a + 1] END,
            'workspace_sid', CASE WHEN p.k = 0 THEN 'WS' || lpad(to_hex(r % 4), 32, '0') END,
            -- reservation_sid: stored as the chain key only, as the chain trigger does since 0012
            'task_sid', CASE WHEN p.k = 0 THEN 'WT' || lpad(to_hex(r), 32, '0') END,
            'worker_sid', 'WK' || lpad(to_hex(r % 5000), 32, '0'),
            'from_status', CASE WHEN p.k IN (1, 2) THEN (ARRAY['pending', 'accepted'])[p.a + 1] END,
            'to_status', CASE WHEN p.k IN (1, 2) THEN (ARRAY['accepted', 'completed'])[p.a + 1] END,
            'etag_before', CASE WHEN p.k IN (1, 2) THEN (p.a + 1)::text END,
            'etag_after', CASE WHEN p.k = 2 THEN (p.a + 2)::text END,
            'attempt', CASE WHEN p.k > 0 THEN 1 END,
            'http_status', CASE WHEN p.k > 1 THEN 200 END,
            'twilio_request_id', CASE WHEN p.k = 2 THEN 'RQ' || md5(p.pos::text) END,
            'duration_ms', CASE WHEN p.k = 2 THEN 40 + r % 60 END,
            'outcome', CASE WHEN p.k = 3 THEN CASE WHEN r % 100 = 0 THEN 'failed' ELSE 'applied' END END,
            'worker_host', 'worker-' || r % 4, 'worker_pid', 1000 + r % 64,
            'correlation_id', CASE WHEN p.k = 0 THEN 'corr-' || (r * 2 + p.a) END,
            'producer', CASE WHEN p.k = 0 THEN 'routing' END,
            'params', CASE WHEN p.k = 0 AND p.a = 0 THEN '{"instruction": "accept"}'::jsonb END,
            'detail', CASE WHEN p.k = 1 THEN 'hmac-sha256:' || md5(p.pos::text) END,
            'source', CASE WHEN p.k = 2 THEN 'action' END,
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
                                     %(step_us)s, %(xid_per_position)s, %(in_flight)s)
     ORDER BY position  -- in time order on disk, as the workers write them
    RETURNING chain_key, chain_seq, row_hash, position
)
INSERT INTO ledger.chain_heads (chain_key, chain_seq, head_hash, head_position)
SELECT DISTINCT ON (chain_key) chain_key, chain_seq, row_hash, position
  FROM added ORDER BY chain_key, chain_seq DESC
ON CONFLICT (chain_key) DO UPDATE
   SET chain_seq = excluded.chain_seq, head_hash = excluded.head_hash, head_position = excluded.head_position;

-- name: load_actions
-- The registry of the same reservations (an action's parameters live on its received row).
INSERT INTO ledger.actions (
    action_id, action, workspace_sid, reservation_sid, task_sid, worker_sid, correlation_id,
    producer, received_at, attempts, outcome, outcome_at
)
SELECT md5(a::text)::uuid, (ARRAY['accept', 'complete'])[a %% 2 + 1], 'WS' || lpad(to_hex(a / 2 %% 4), 32, '0'),
       'WR' || lpad(to_hex(a / 2), 32, '0'), 'WT' || lpad(to_hex(a / 2), 32, '0'),
       'WK' || lpad(to_hex(a / 2 %% 5000), 32, '0'),
       'corr-' || a, 'routing',
       %(t0)s::timestamptz + make_interval(secs => a * 4 * %(step_us)s / 1e6), 1,
       CASE WHEN a / 2 %% 100 = 0 THEN 'failed' ELSE 'applied' END,
       %(t0)s::timestamptz + make_interval(secs => a * 4 * %(step_us)s / 1e6)
  FROM generate_series(%(first)s::bigint * 2, %(last)s::bigint * 2 + 1) AS a;

-- name: load_projection
-- The projection of the same reservations.
INSERT INTO ledger.reservations (
    reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
)
SELECT 'WR' || lpad(to_hex(r), 32, '0'), 'WS' || lpad(to_hex(r %% 4), 32, '0'), 'WT' || lpad(to_hex(r), 32, '0'),
       'WK' || lpad(to_hex(r %% 5000), 32, '0'), 'completed', '3', r * 8, %(t0)s::timestamptz
  FROM generate_series(%(first)s::bigint, %(last)s) AS r;
