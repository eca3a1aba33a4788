-- The ledger's named queries, loaded once by workers.ledger.queries. Each starts with a
-- "-- name: <name>" line; the comment lines that follow describe it. Write operations call the
-- functions of the migrations, so that each is one transaction and one round trip.

-- name: row_columns
-- Not a query: the columns of a ledger row as the readers read it, from ledger.events e and its
-- registry entry ledger.actions a (LEFT JOIN), put in place of {row_columns} in the queries below
-- (workers.ledger.queries) when the file is loaded. An action's facts (action, workspace and task
-- SIDs, correlation id, producer) come from its registry entry for every row but its received row,
-- which stores them (and a rejected input, which keeps its own): rows appended since 0012 do not
-- repeat them, older rows hold the same values; a row's reservation SID is its chain key (0012).
-- The view ledger.rows (migration 0014) reads rows alike for SQL written by hand. The readers keep
-- the join: history by task or correlation id also filters on the stored column, whose index the
-- view cannot reach (ops/LEDGER.md, "Reading the ledger by hand"). tests/ledger/test_readable_rows.py
-- holds the two to one definition: a change here needs a migration that replaces ledger.rows.
e.position, e.tx_id, e.recorded_at, e.chain_key, e.chain_seq, e.prev_hash, e.row_hash, e.kind,
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
e.params, e.detail, e.source, e.trace_id;

-- name: record_received
-- Register an action and append its 'received' row; false when action_id was already known.
SELECT ledger.record_received(
    %(action_id)s, %(action)s, %(workspace_sid)s, %(reservation_sid)s, %(task_sid)s,
    %(worker_sid)s, %(params)s, %(expected_status)s, %(not_after)s, %(correlation_id)s,
    %(producer)s, %(worker_host)s, %(worker_pid)s, %(trace_id)s
) AS created;

-- name: receive
-- record_received, the action's outcome if it had one already, the reservation's projection and
-- the action's pending intent (an update whose answer was lost), in one round trip (the hot path
-- of every action). The reads see the statement's snapshot: a newly registered action has no
-- outcome and no intent yet anyway.
WITH received AS (
    SELECT ledger.record_received(
        %(action_id)s, %(action)s, %(workspace_sid)s, %(reservation_sid)s, %(task_sid)s,
        %(worker_sid)s, %(params)s, %(expected_status)s, %(not_after)s, %(correlation_id)s,
        %(producer)s, %(worker_host)s, %(worker_pid)s, %(trace_id)s
    ) AS created
)
SELECT received.created,
       (SELECT outcome FROM ledger.actions WHERE action_id = %(action_id)s) AS outcome,
       r.reservation_sid, r.workspace_sid, r.task_sid, r.worker_sid, r.status, r.etag,
       r.last_position, r.updated_at,
       i.attempt AS intent_attempt, i.etag_before AS intent_etag, i.from_status AS intent_from_status,
       i.to_status AS intent_to_status, i.recorded_at AS intent_at
  FROM received
  LEFT JOIN ledger.reservations AS r ON r.reservation_sid = %(reservation_sid)s
  LEFT JOIN LATERAL (
        -- Only an action received before can have one (OFFSET 0 keeps the test a one-time filter,
        -- so a new action's receipt does not plan and run the lookup at all).
        SELECT * FROM ledger.pending_intent(%(action_id)s) WHERE NOT received.created OFFSET 0
       ) AS i ON true;

-- name: get_action
-- One action's registry entry, with the parameters of its 'received' row (stored there only).
SELECT a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
       ledger.action_params(a.action_id) AS params,
       a.expected_status, a.not_after, a.correlation_id, a.producer, a.received_at, a.attempts, a.outcome,
       a.outcome_at, a.redrives
  FROM ledger.actions AS a
 WHERE action_id = %(action_id)s;

-- name: record_step
-- Append an attempt, a conflict, an intent or a redrive of a received action.
SELECT ledger.record_step(
    %(kind)s, %(action_id)s, %(attempt)s, %(http_status)s, %(twilio_error_code)s,
    %(twilio_request_id)s, %(duration_ms)s, %(from_status)s, %(to_status)s, %(etag_before)s,
    %(etag_after)s, %(detail)s, %(worker_host)s, %(worker_pid)s, %(trace_id)s
) AS position;

-- name: record_transition
-- Append a transition (unless the ledger holds it already: appended false), update the
-- projection and settle the action's outcome, in one transaction.
SELECT transition_position, outcome_position, outcome, appended
  FROM ledger.record_transition(
    %(action_id)s, %(reservation_sid)s, %(workspace_sid)s, %(task_sid)s, %(worker_sid)s,
    %(from_status)s, %(to_status)s, %(etag_before)s, %(etag_after)s, %(attempt)s,
    %(http_status)s, %(twilio_request_id)s, %(duration_ms)s, %(outcome)s, %(detail)s,
    %(worker_host)s, %(worker_pid)s, %(source)s, %(trace_id)s
);

-- name: record_outcome
-- Settle an action without a transition; the first outcome recorded wins.
SELECT outcome_position, outcome
  FROM ledger.record_outcome(
    %(action_id)s, %(outcome)s, %(http_status)s, %(twilio_error_code)s, %(twilio_request_id)s,
    %(detail)s, %(worker_host)s, %(worker_pid)s, %(trace_id)s
);

-- name: record_rejected_input
-- Append a message that broke the schema.
SELECT ledger.record_rejected_input(
    %(action_id)s, %(action)s, %(workspace_sid)s, %(reservation_sid)s, %(task_sid)s,
    %(worker_sid)s, %(params)s, %(correlation_id)s, %(producer)s, %(detail)s, %(worker_host)s,
    %(worker_pid)s, %(trace_id)s
) AS position;

-- name: get_reservation
-- The projection's row for one reservation: its cached status and ETag.
SELECT reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
  FROM ledger.reservations
 WHERE reservation_sid = %(reservation_sid)s;

-- name: all_reservations
-- The whole projection, for comparison with a rebuild.
SELECT reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
  FROM ledger.reservations
 ORDER BY reservation_sid;

-- name: transitions_in_chain_order
-- What the projection is folded from: every transition, each reservation's in chain order, read
-- as history reads rows (an action's facts from the registry since 0012).
SELECT {row_columns}
  FROM ledger.events e
  LEFT JOIN ledger.actions a ON a.action_id = e.action_id
 WHERE e.kind = 'transition'
 ORDER BY e.chain_key, e.chain_seq;

-- name: clear_projection
-- Empty the projection before a rebuild (owner only).
DELETE FROM ledger.reservations;

-- name: insert_projection
-- One row of a rebuilt projection (owner only).
INSERT INTO ledger.reservations (
    reservation_sid, workspace_sid, task_sid, worker_sid, status, etag, last_position, updated_at
) VALUES (
    %(reservation_sid)s, %(workspace_sid)s, %(task_sid)s, %(worker_sid)s, %(status)s, %(etag)s,
    %(last_position)s, %(updated_at)s
);

-- name: history
-- Ledger rows in ledger order, after a cursor, only below the horizon of the oldest ledger
-- writer still in flight (ledger.visible_horizon: evaluated once, against this statement's
-- snapshot). {filters} is composed with psycopg.sql from fixed columns; the row is read as
-- row_columns says.
SELECT {row_columns}
  FROM ledger.events e
  LEFT JOIN ledger.actions a ON a.action_id = e.action_id
 WHERE e.tx_id < (SELECT ledger.visible_horizon(pg_current_snapshot()))
   AND (e.tx_id, e.position) > (%(after_tx_id)s::text::xid8, %(after_position)s)
   {filters}
 ORDER BY e.tx_id, e.position
 LIMIT %(limit)s;

-- name: history_in_range
-- history, the first page of a closed time range with no more selective filter (reader.py says
-- when). The ledger's order index walked from
-- the cursor would pass every row written before the range (in a month's partition, millions:
-- the planner takes time and ledger order for unrelated, so it often chooses that walk); instead
-- the range's own rows are read first (the recorded_at index), at most %(range_rows)s of them,
-- and when they are fewer, all of them are there to sort. A denser range walks the order index,
-- where its rows come soon. The same rows either way; the horizon is read once for both. The
-- page's rows are read as history reads them (an action's facts from the registry: 0012).
WITH horizon AS MATERIALIZED (
    SELECT ledger.visible_horizon(pg_current_snapshot()) AS tx_id
), in_range AS MATERIALIZED (
    -- The registry is joined only for a filter on an action's fact (PostgreSQL drops an unused
    -- join on its primary key); the page's rows are read as history reads them, below.
    SELECT e.*
      FROM ledger.events e
      LEFT JOIN ledger.actions a ON a.action_id = e.action_id
     WHERE e.tx_id < (SELECT h.tx_id FROM horizon h)
       AND (e.tx_id, e.position) > (%(after_tx_id)s::text::xid8, %(after_position)s)
       {filters}
     LIMIT %(range_rows)s
), sparse AS MATERIALIZED (
    SELECT count(*) < %(range_rows)s AS all_read FROM in_range
)
SELECT {row_columns}
  FROM (
    (SELECT r.*
       FROM in_range r
      WHERE (SELECT s.all_read FROM sparse s)
      ORDER BY r.tx_id, r.position
      LIMIT %(limit)s)
    UNION ALL
    (SELECT e.*
       FROM ledger.events e
       LEFT JOIN ledger.actions a ON a.action_id = e.action_id
      WHERE NOT (SELECT s.all_read FROM sparse s)
        AND e.tx_id < (SELECT h.tx_id FROM horizon h)
        AND (e.tx_id, e.position) > (%(after_tx_id)s::text::xid8, %(after_position)s)
        {filters}
      ORDER BY e.tx_id, e.position
      LIMIT %(limit)s)
  ) AS e
  LEFT JOIN ledger.actions a ON a.action_id = e.action_id
 ORDER BY e.tx_id, e.position;

-- name: seal_checkpoint
-- Seal the chain heads that moved since the last checkpoint.
SELECT checkpoint_id, chains, max_position, digest FROM ledger.seal_checkpoint();

-- name: verify_rows
-- Every row whose hash, link or sequence number is wrong, with what was expected. A chain whose
-- first rows were archived and detached starts from its last archived row.
SELECT position, chain_key, chain_seq, row_hash <> computed AS altered,
       prev_hash <> expected_prev AS broken_link,
       chain_seq - previous_seq - 1 AS missing_before
  FROM (
    SELECT e.position, e.chain_key, e.chain_seq, e.prev_hash, e.row_hash,
           ledger.event_hash(e) AS computed,
           coalesce(lag(e.row_hash) OVER chain, a.row_hash,
                    '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS expected_prev,
           coalesce(lag(e.chain_seq) OVER chain, a.chain_seq, 0) AS previous_seq
      FROM ledger.events e
      LEFT JOIN (
        SELECT DISTINCT ON (h.chain_key) h.chain_key, h.chain_seq, h.row_hash
          FROM ledger.archive_heads h JOIN ledger.archives m ON m.month = h.month AND m.detached
         ORDER BY h.chain_key, h.month DESC
      ) AS a ON a.chain_key = e.chain_key
    WINDOW chain AS (PARTITION BY e.chain_key ORDER BY e.chain_seq)
  ) AS checked
 WHERE row_hash <> computed
    OR prev_hash <> expected_prev
    OR chain_seq <> previous_seq + 1
 ORDER BY position;

-- name: verify_heads
-- Chains that end short of their head, or on another row than their head, or not at all (a
-- chain whose rows were all archived and detached ends on its last archived row).
SELECT h.chain_key, h.chain_seq AS head_seq, h.head_position,
       coalesce(t.chain_seq, a.chain_seq) AS tail_seq, coalesce(t.position, a.head_position) AS tail_position
  FROM ledger.chain_heads h
  LEFT JOIN LATERAL (
    SELECT e.chain_seq, e.position, e.row_hash
      FROM ledger.events e
     WHERE ledger.key64(e.chain_key) = ledger.key64(h.chain_key) AND e.chain_key = h.chain_key
       AND e.chain_seq <= h.chain_seq
     ORDER BY e.chain_seq DESC
     LIMIT 1
  ) AS t ON true
  LEFT JOIN LATERAL (
    SELECT ah.chain_seq, ah.row_hash, ah.head_position
      FROM ledger.archive_heads ah JOIN ledger.archives m ON m.month = ah.month AND m.detached
     WHERE ah.chain_key = h.chain_key AND t.chain_seq IS NULL
     ORDER BY ah.month DESC
     LIMIT 1
  ) AS a ON true
 WHERE coalesce(t.chain_seq, a.chain_seq) IS NULL OR coalesce(t.chain_seq, a.chain_seq) <> h.chain_seq
    OR coalesce(t.row_hash, a.row_hash) <> h.head_hash
 ORDER BY h.head_position;

-- name: verify_first_moments
-- Chains whose head says they began after one of their rows was recorded (migration 0018): the
-- write path's look-ups in a chain read only from that moment on, so such a head would hide the
-- row from them. A head without a first moment (a chain begun before 0018) is not checked. One
-- pass over the ledger (each chain's earliest row), as the rest of the full verify reads it.
SELECT h.chain_key, h.head_position, h.first_recorded_at, m.earliest
  FROM (SELECT e.chain_key, min(e.recorded_at) AS earliest FROM ledger.events e GROUP BY e.chain_key) AS m
  JOIN ledger.chain_heads h ON h.chain_key = m.chain_key
 WHERE h.first_recorded_at > m.earliest
 ORDER BY h.head_position;

-- name: verify_first_moments_since
-- verify_first_moments for the chains with a row at or above a checkpoint's horizon, each read
-- only in the months before its head's first moment.
SELECT h.chain_key, h.head_position, h.first_recorded_at, r.earliest
  FROM (SELECT DISTINCT e.chain_key FROM ledger.events e WHERE e.tx_id >= %(horizon)s::text::xid8) AS moved
 CROSS JOIN LATERAL (
    SELECT * FROM ledger.chain_heads c WHERE c.chain_key = moved.chain_key LIMIT 1
 ) AS h
 CROSS JOIN LATERAL (
    SELECT min(e.recorded_at) AS earliest
      FROM ledger.events e
     WHERE ledger.key64(e.chain_key) = ledger.key64(h.chain_key) AND e.chain_key = h.chain_key
       AND e.recorded_at < h.first_recorded_at
 ) AS r
 WHERE r.earliest IS NOT NULL
 ORDER BY h.head_position;

-- name: verify_sealed_heads
-- Each chain's latest sealed head that the ledger no longer holds as sealed (a head in a month
-- archived and detached was checked against the export when it was archived).
SELECT s.checkpoint_id, s.chain_key, s.chain_seq, s.head_position,
       e.position IS NULL AS missing
  FROM (
    SELECT DISTINCT ON (chain_key) checkpoint_id, chain_key, chain_seq, head_hash, head_position
      FROM ledger.checkpoint_heads
     ORDER BY chain_key, checkpoint_id DESC
  ) AS s
  LEFT JOIN ledger.events e
    ON ledger.key64(e.chain_key) = ledger.key64(s.chain_key) AND e.chain_key = s.chain_key
   AND e.chain_seq = s.chain_seq
 WHERE (e.position IS NULL OR e.row_hash <> s.head_hash)
   AND NOT EXISTS (
    SELECT FROM ledger.archive_heads ah JOIN ledger.archives m ON m.month = ah.month AND m.detached
     WHERE ah.chain_key = s.chain_key AND ah.chain_seq >= s.chain_seq AND e.position IS NULL
   )
 ORDER BY s.head_position;

-- name: verify_checkpoints
-- Checkpoints after checkpoint %(after)s (0: all of them) whose digest or link to the previous
-- one does not hold. An incremental verify starts after the checkpoint it starts from: the verify
-- before it was sealed checked that one, and re-hashing its heads costs as much as the chains it
-- sealed.
SELECT c.checkpoint_id, c.max_position
  FROM ledger.checkpoints c
  LEFT JOIN ledger.checkpoints p ON p.checkpoint_id = c.checkpoint_id - 1
  LEFT JOIN LATERAL (
    SELECT coalesce(array_agg(h.chain_key ORDER BY h.chain_key), '{}') AS keys,
           coalesce(array_agg(h.chain_seq ORDER BY h.chain_key), '{}') AS seqs,
           coalesce(array_agg(encode(h.head_hash, 'hex') ORDER BY h.chain_key), '{}') AS hashes,
           count(*) AS chains
      FROM ledger.checkpoint_heads h
     WHERE h.checkpoint_id = c.checkpoint_id
  ) AS s ON true
 WHERE c.checkpoint_id > %(after)s
   AND (c.prev_digest <> coalesce(p.digest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
    OR (p.checkpoint_id IS NULL AND c.checkpoint_id <> 1)
    OR s.chains <> c.chains
    OR c.digest <> ledger.checkpoint_digest(c.prev_digest, c.checkpoint_id, c.max_position, s.keys, s.seqs, s.hashes))
 ORDER BY c.checkpoint_id;

-- name: count_events
-- How many rows the ledger holds.
SELECT count(*) AS n FROM ledger.events;

-- name: verify_unheaded_rows
-- Rows past their chain's head, or in a chain that has no head: rows nobody appended.
SELECT e.position, e.chain_key, e.chain_seq, h.chain_seq AS head_seq
  FROM ledger.events e
  LEFT JOIN ledger.chain_heads h ON h.chain_key = e.chain_key
 WHERE h.chain_key IS NULL OR e.chain_seq > h.chain_seq
 ORDER BY e.position;

-- name: latest_checkpoint
-- The newest checkpoint, to be noted outside the database.
SELECT checkpoint_id, chains, max_position, digest
  FROM ledger.checkpoints
 ORDER BY checkpoint_id DESC
 LIMIT 1;

-- name: get_checkpoint
-- One checkpoint by id.
SELECT checkpoint_id, chains, max_position, digest
  FROM ledger.checkpoints
 WHERE checkpoint_id = %(checkpoint_id)s;

-- name: lock_reservation
-- Serialise the workers on one reservation: a session-level advisory lock held for an attempt
-- (class 0x52535653, "RSVS"; the chain lock uses another class, so the two never collide).
-- The subquery sets how long to wait first (FROM is evaluated before the target list).
SELECT pg_advisory_lock(1381193299, hashtext(%(reservation_sid)s))
  FROM (SELECT set_config('lock_timeout', %(timeout)s, false)) AS waiting;

-- name: unlock_reservation
SELECT pg_advisory_unlock(1381193299, hashtext(%(reservation_sid)s));

-- name: ping
-- Readiness: the database answers and this role can read the ledger.
SELECT FROM ledger.events LIMIT 0;

-- name: settled_actions
-- Registry entries settled with one of the given outcomes and never redriven (redrive's
-- candidates: an original is redriven at most once), oldest first.
SELECT a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
       ledger.action_params(a.action_id) AS params,
       a.expected_status, a.not_after, a.correlation_id, a.producer, a.received_at, a.attempts, a.outcome,
       a.outcome_at, a.redrives
  FROM ledger.actions AS a
 WHERE outcome = ANY(%(outcomes)s::text[])
   AND redrives = 0
   -- the key and the text: actions_reservation holds the key (0017)
   AND (%(reservation_sid)s::text IS NULL
        OR ledger.key64(reservation_sid) = ledger.key64(%(reservation_sid)s::text)
           AND reservation_sid = %(reservation_sid)s::text)
   AND (%(since)s::timestamptz IS NULL OR outcome_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR outcome_at < %(until)s::timestamptz)
 ORDER BY outcome_at, action_id
 LIMIT %(limit)s;

-- name: chain_rows
-- One hash chain (a reservation's), in chain order, each row checked as verify_rows checks it:
-- for the console's per-reservation verification state (the chain index: key64(chain_key), chain_seq).
SELECT position, chain_seq, row_hash = ledger.event_hash(e) AS hash_ok,
       prev_hash = coalesce(lag(row_hash) OVER chain,
                            '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS link_ok,
       chain_seq = coalesce(lag(chain_seq) OVER chain, 0) + 1 AS seq_ok,
       row_hash
  FROM ledger.events e
 WHERE ledger.key64(chain_key) = ledger.key64(%(chain_key)s::text) AND chain_key = %(chain_key)s
WINDOW chain AS (ORDER BY chain_seq)
 ORDER BY chain_seq;

-- name: chain_seals
-- One chain's head, and its latest sealed head with the checkpoint that sealed it.
SELECT h.chain_seq AS head_seq, h.head_hash, s.checkpoint_id, s.chain_seq AS sealed_seq,
       s.head_hash AS sealed_hash, s.head_position AS sealed_position
  FROM (SELECT %(chain_key)s::text AS chain_key) AS k
  LEFT JOIN ledger.chain_heads h ON h.chain_key = k.chain_key
  LEFT JOIN LATERAL (
    SELECT checkpoint_id, chain_seq, head_hash, head_position
      FROM ledger.checkpoint_heads c
     WHERE c.chain_key = k.chain_key
     ORDER BY checkpoint_id DESC
     LIMIT 1
  ) AS s ON true;

-- name: outcome_counts
-- Outcomes settled in the last span seconds, per outcome and per bucket of that many seconds
-- counted back from now (0: the latest), for the console's overview chart. Rows are binned by
-- date_bin (timestamps, cheap); only the bins are turned into bucket numbers.
SELECT outcome, greatest(ceil(extract(epoch FROM now() - bin) / %(bucket)s)::int - 1, 0) AS bucket,
       sum(n)::int AS n
  FROM (
    SELECT outcome, date_bin(make_interval(secs => %(bucket)s), outcome_at, now()) AS bin, count(*) AS n
      FROM ledger.actions
     WHERE outcome_at >= now() - make_interval(secs => %(span)s)
       AND outcome IS NOT NULL
     GROUP BY 1, 2
  ) AS binned
 GROUP BY 1, 2;

-- name: attention_actions
-- The latest actions that ended with one of the given outcomes and were never redriven.
SELECT a.action_id, a.action, a.workspace_sid, a.reservation_sid, a.task_sid, a.worker_sid,
       ledger.action_params(a.action_id) AS params,
       a.expected_status, a.not_after, a.correlation_id, a.producer, a.received_at, a.attempts, a.outcome,
       a.outcome_at, a.redrives
  FROM ledger.actions AS a
 WHERE outcome = ANY(%(outcomes)s::text[])
   AND redrives = 0
 ORDER BY outcome_at DESC
 LIMIT %(limit)s;

-- name: last_checkpoint
-- The newest checkpoint with when it was taken, for the console's overview.
SELECT checkpoint_id, taken_at, chains, max_position
  FROM ledger.checkpoints
 ORDER BY checkpoint_id DESC
 LIMIT 1;

-- name: checkpoint_horizon
-- One checkpoint with the read horizon it was sealed at (NULL for checkpoints before 0005).
SELECT checkpoint_id, max_position, horizon::text AS horizon
  FROM ledger.checkpoints
 WHERE checkpoint_id = %(checkpoint_id)s;

-- name: verify_rows_since
-- verify_rows for the rows a checkpoint did not seal: those at or above its horizon (the
-- ledger-order index) past their chain's head sealed by that checkpoint or before, each chain
-- starting from that sealed head, or from its last archived row when a detached month holds a
-- later one (checked against the database when it was archived), or from nothing for a chain
-- born since. Each row in trouble,
-- and one more row (any) that carries the count of rows checked. Rows are hashed as they are
-- read, in a subquery of its own that PostgreSQL may run in parallel workers (hashing is most of
-- the work), so that only their keys and hashes are joined with the sealed heads (one look-up
-- per chain: Memoize) and sorted into chain order.
SELECT position, chain_key, chain_seq, altered, broken_link, missing_before, checked
  FROM (
    SELECT position, chain_key, chain_seq, altered,
           prev_hash <> coalesce(lag(row_hash) OVER chain, sealed_hash,
                                 '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
               AS broken_link,
           chain_seq - coalesce(lag(chain_seq) OVER chain, sealed_seq, 0) - 1 AS missing_before,
           count(*) OVER () AS checked,
           row_number() OVER () AS nth
      FROM (
        SELECT r.position, r.chain_key, r.chain_seq, r.prev_hash, r.row_hash, r.altered,
               s.chain_seq AS sealed_seq, s.head_hash AS sealed_hash
          FROM (
            SELECT e.position, e.chain_key, e.chain_seq, e.prev_hash, e.row_hash,
                   e.row_hash <> ledger.event_hash(e) AS altered
              FROM ledger.events e
             WHERE e.tx_id >= %(horizon)s::text::xid8
            OFFSET 0
          ) AS r
          LEFT JOIN LATERAL (
            SELECT k.chain_seq, k.head_hash
              FROM (
                (SELECT c.chain_seq, c.head_hash
                   FROM ledger.checkpoint_heads c
                  WHERE c.chain_key = r.chain_key AND c.checkpoint_id <= %(checkpoint_id)s
                  ORDER BY c.checkpoint_id DESC
                  LIMIT 1)
                UNION ALL
                (SELECT ah.chain_seq, ah.row_hash
                   FROM ledger.archive_heads ah JOIN ledger.archives m ON m.month = ah.month AND m.detached
                  WHERE ah.chain_key = r.chain_key
                  ORDER BY ah.month DESC
                  LIMIT 1)
              ) AS k
             ORDER BY k.chain_seq DESC
             LIMIT 1
          ) AS s ON true
         WHERE r.chain_seq > coalesce(s.chain_seq, 0)
      ) AS rows_since
    WINDOW chain AS (PARTITION BY chain_key ORDER BY chain_seq)
  ) AS checked
 WHERE altered OR broken_link OR missing_before <> 0 OR nth = 1
 ORDER BY position;

-- name: verify_heads_since
-- verify_heads for the chains that moved since a checkpoint: each must end on its head. A chain
-- whose head is one of the new rows ends on it (no row past the head: verify_unheaded_rows_since);
-- only the others are looked up in the whole ledger (the chain index of every partition). Each
-- chain's head is looked up by key: the moved chains are few, chain_heads holds them all.
WITH new_rows AS MATERIALIZED (
    SELECT e.chain_key, e.chain_seq, e.row_hash FROM ledger.events e WHERE e.tx_id >= %(horizon)s::text::xid8
), unended AS MATERIALIZED (
    SELECT h.chain_key, h.chain_seq, h.head_hash, h.head_position
      FROM (SELECT DISTINCT n.chain_key FROM new_rows n) AS moved
     CROSS JOIN LATERAL (
        SELECT * FROM ledger.chain_heads c WHERE c.chain_key = moved.chain_key LIMIT 1
     ) AS h
     WHERE NOT EXISTS (
        SELECT FROM new_rows n
         WHERE n.chain_key = h.chain_key AND n.chain_seq = h.chain_seq AND n.row_hash = h.head_hash
     )
)
SELECT h.chain_key, h.chain_seq AS head_seq, h.head_position,
       t.chain_seq AS tail_seq, t.position AS tail_position
  FROM unended h
  LEFT JOIN LATERAL (
    SELECT e.chain_seq, e.position, e.row_hash
      FROM ledger.events e
     WHERE ledger.key64(e.chain_key) = ledger.key64(h.chain_key) AND e.chain_key = h.chain_key
       AND e.chain_seq <= h.chain_seq
     ORDER BY e.chain_seq DESC
     LIMIT 1
  ) AS t ON true
 WHERE t.chain_seq IS NULL OR t.chain_seq <> h.chain_seq OR t.row_hash <> h.head_hash
 ORDER BY h.head_position;

-- name: verify_unheaded_rows_since
-- verify_unheaded_rows for the rows since a checkpoint's horizon.
SELECT e.position, e.chain_key, e.chain_seq, h.chain_seq AS head_seq
  FROM ledger.events e
  LEFT JOIN LATERAL (
    SELECT c.chain_key, c.chain_seq FROM ledger.chain_heads c WHERE c.chain_key = e.chain_key LIMIT 1
  ) AS h ON true
 WHERE e.tx_id >= %(horizon)s::text::xid8
   AND (h.chain_key IS NULL OR e.chain_seq > h.chain_seq)
 ORDER BY e.position;

-- name: archive_first_month
-- The month of the ledger's first row (positions grow with recorded_at), to list the months to archive.
SELECT date_trunc('month', recorded_at AT TIME ZONE 'UTC')::date AS month
  FROM ledger.events
 ORDER BY position
 LIMIT 1;

-- name: archived_months
-- The months archived so far, oldest first.
SELECT month, checkpoint_id, row_count, file_name, sha256, detached, archived_at
  FROM ledger.archives
 ORDER BY month;

-- name: archive_rows
-- One month's rows in ledger position order, as the archive writes them: the canonical text the
-- hash covers, and the whole row as JSON for people (its hashes as hex).
SELECT e.position, e.chain_key, e.chain_seq, encode(e.prev_hash, 'hex') AS prev_hash,
       encode(e.row_hash, 'hex') AS row_hash, ledger.event_canonical(e) AS canonical,
       to_jsonb(e) - 'prev_hash' - 'row_hash' AS row
  FROM ledger.events e
 WHERE e.recorded_at >= %(start)s AND e.recorded_at < %(end)s
 ORDER BY e.position;

-- name: archive_summary
-- What an export of a month must match: its rows, first and last positions, and the SHA-256 of
-- its row hashes in position order.
SELECT count(*) AS row_count, min(position) AS first_position, max(position) AS last_position,
       sha256(coalesce(string_agg(row_hash, ''::bytea ORDER BY position), ''::bytea)) AS rows_digest
  FROM ledger.events
 WHERE recorded_at >= %(start)s AND recorded_at < %(end)s;

-- name: archive_heads
-- Each chain's last row in a month, with its head sealed by the archive's checkpoint (or before).
SELECT m.chain_key, m.chain_seq, encode(m.row_hash, 'hex') AS row_hash, m.position,
       s.chain_seq AS sealed_seq, encode(s.head_hash, 'hex') AS sealed_hash
  FROM (
    SELECT DISTINCT ON (e.chain_key) e.chain_key, e.chain_seq, e.row_hash, e.position
      FROM ledger.events e
     WHERE e.recorded_at >= %(start)s AND e.recorded_at < %(end)s
     ORDER BY e.chain_key, e.chain_seq DESC
  ) AS m
  LEFT JOIN LATERAL (
    SELECT c.chain_seq, c.head_hash
      FROM ledger.checkpoint_heads c
     WHERE c.chain_key = m.chain_key AND c.checkpoint_id <= %(checkpoint_id)s
     ORDER BY c.checkpoint_id DESC
     LIMIT 1
  ) AS s ON true
 ORDER BY m.chain_key;

-- name: archive_partition
-- The partition of ledger.events (not the DEFAULT one) that holds a month, with its first month
-- and the month after its last.
SELECT b.partition_name, (b.lower AT TIME ZONE 'UTC')::date AS lower_month,
       (b.upper AT TIME ZONE 'UTC')::date AS upper_month
  FROM ledger.events_partition_bounds() b
 WHERE b.lower <= %(start)s AND %(start)s < b.upper;

-- name: events_default_partition
-- The DEFAULT partition of ledger.events (none when the ledger is not partitioned).
SELECT c.relname
  FROM pg_partitioned_table p
  JOIN pg_class c ON c.oid = p.partdefid
 WHERE p.partrelid = to_regclass('ledger.events');

-- name: record_archive
-- Record an archived month and its chains' last rows (the owner, in the transaction that detaches it).
WITH month AS (
    INSERT INTO ledger.archives (
        month, checkpoint_id, row_count, first_position, last_position, file_name, sha256, manifest,
        detached
    ) VALUES (
        %(month)s, %(checkpoint_id)s, %(row_count)s, %(first_position)s, %(last_position)s,
        %(file_name)s, %(sha256)s, %(manifest)s, %(detached)s
    )
    RETURNING month
)
INSERT INTO ledger.archive_heads (month, chain_key, chain_seq, row_hash, head_position)
SELECT DISTINCT ON (e.chain_key) (SELECT month FROM month), e.chain_key, e.chain_seq, e.row_hash, e.position
  FROM ledger.events e
 WHERE e.recorded_at >= %(start)s AND e.recorded_at < %(end)s
 ORDER BY e.chain_key, e.chain_seq DESC;

-- name: recorded_archive
-- What the database recorded when it archived a month: the manifest and the events file's digest.
SELECT manifest, sha256 FROM ledger.archives WHERE month = %(month)s;

-- name: checkpoint_prev_digest
-- The digest a checkpoint follows, for an archive's manifest.
SELECT encode(prev_digest, 'hex') AS prev_digest FROM ledger.checkpoints WHERE checkpoint_id = %(checkpoint_id)s;

-- name: detached_months
-- The archived months whose rows are no longer in ledger.events (their partitions were detached).
SELECT month FROM ledger.archives WHERE detached ORDER BY month;

-- name: create_events_partitions
-- Make the monthly partitions of ledger.events that are missing, from this month to ahead months
-- after it, each of months month(s) (owner only); returns the ones made.
SELECT partition_name FROM ledger.create_events_partitions(%(ahead)s, %(months)s) AS partition_name;

-- name: events_partitions
-- Each partition of ledger.events with its range (the DEFAULT partition has none) and its rows'
-- presence, in time order. A partition's rows are found by its range: PostgreSQL then reads that
-- partition only (run-time pruning). The DEFAULT partition's is NULL here: no filter on
-- ledger.events reaches it alone (one on tableoid reads every partition to the end), so the
-- caller asks the partition itself.
SELECT c.relname AS partition_name, b.lower, b.upper,
       CASE WHEN b.lower IS NOT NULL THEN
           EXISTS (SELECT FROM ledger.events e WHERE e.recorded_at >= b.lower AND e.recorded_at < b.upper)
       END AS has_rows,
       coalesce(starts_with(obj_description(c.oid, 'pg_class'), 'compacted '), false) AS compacted
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhrelid
  LEFT JOIN ledger.events_partition_bounds() b ON b.partition_name = c.relname
 WHERE i.inhparent = 'ledger.events'::regclass
 ORDER BY b.lower NULLS LAST;

-- name: partitions_to_compact
-- The partitions of ledger.events whose months are over by %(before)s and hold rows (found by their
-- range: each partition read for one row, no other), not compacted yet (ledger compact marks each
-- it finishes with a comment), oldest first. The DEFAULT partition never: a row of any month may
-- still land there.
SELECT b.partition_name
  FROM ledger.events_partition_bounds() b
  JOIN pg_class c ON c.relname = b.partition_name AND c.relnamespace = 'ledger'::regnamespace
 WHERE b.upper <= %(before)s
   AND EXISTS (SELECT FROM ledger.events e WHERE e.recorded_at >= b.lower AND e.recorded_at < b.upper)
   AND NOT coalesce(starts_with(obj_description(c.oid, 'pg_class'), 'compacted '), false)
 ORDER BY b.lower;

-- name: partition_indexes
-- The indexes of one partition of ledger.events: each one's name, access method (only a B-tree has
-- a fillfactor), whether it is valid (a REINDEX CONCURRENTLY cut short leaves an invalid copy named
-- ..._ccnew or ..._ccold) and attached to ledger.events' index, and its bytes.
SELECT c.relname AS index_name, a.amname AS method, i.indisvalid AS valid,
       pg_relation_size(i.indexrelid) AS bytes,
       EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = i.indexrelid) AS attached
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am a ON a.oid = c.relam
 WHERE i.indrelid = to_regclass('ledger.' || quote_ident(%(partition)s))
 ORDER BY 1;

-- name: compact_lock
-- The lock one `ledger compact` holds while it runs (session level: released by compact_unlock or
-- when its server process ends); false when another run holds it.
SELECT pg_try_advisory_lock(1279607889, 1);

-- name: compact_unlock
SELECT pg_advisory_unlock(1279607889, 1);
