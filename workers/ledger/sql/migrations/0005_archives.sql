-- 0005: checkpoints for incremental verification, a seal that scales with the chains it seals,
-- and the record of archived months.
--
-- A checkpoint now keeps the read horizon of the snapshot that sealed it: every row below it was
-- visible to the seal (so its chain's head was at or past it), every row the seal did not see
-- lies at or above it. `reservations ledger verify --since-checkpoint N` reads only the rows at
-- or above checkpoint N's horizon (the ledger-order index), starting each chain from its head
-- sealed by N or before. Checkpoints sealed before 0005 have none: seal a new one first.
SET LOCAL ROLE reservations_owner;

ALTER TABLE ledger.checkpoints ADD COLUMN horizon xid8;

-- The seal took minutes over tens of thousands of chains, and grew with their square: the heads'
-- check (below) tested `ledger.checkpoint_problem(checkpoint_id) IS NOT NULL` on
-- `(SELECT DISTINCT checkpoint_id FROM added)`, and PostgreSQL pushes such a test below the
-- DISTINCT, so the digest (every head of the checkpoint, aggregated and sorted) was recomputed
-- once per sealed head. It now runs once per checkpoint. The seal also reads and sorts the heads
-- once (it sorted them for each of its four arrays), in one statement whose snapshot also gives
-- the horizon.
CREATE OR REPLACE FUNCTION ledger.seal_checkpoint()
RETURNS TABLE (checkpoint_id bigint, chains integer, max_position bigint, digest bytea)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    prev ledger.checkpoints;
    new_id bigint;
    keys text[];
    seqs bigint[];
    positions bigint[];
    hashes text[];
    top bigint;
    seen xid8;
    new_digest bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(1279607880, 0);
    SELECT * INTO prev FROM ledger.checkpoints c ORDER BY c.checkpoint_id DESC LIMIT 1;
    new_id := coalesce(prev.checkpoint_id, 0) + 1;
    -- One statement, one snapshot: the heads, the top position and the horizon agree.
    SELECT coalesce(array_agg(m.chain_key), '{}'), coalesce(array_agg(m.chain_seq), '{}'),
           coalesce(array_agg(m.head_position), '{}'), coalesce(array_agg(encode(m.head_hash, 'hex')), '{}'),
           (SELECT coalesce(max(a.head_position), 0) FROM ledger.chain_heads a),
           (SELECT ledger.visible_horizon(pg_current_snapshot()))
      INTO keys, seqs, positions, hashes, top, seen
      FROM (
        SELECT h.chain_key, h.chain_seq, h.head_position, h.head_hash
          FROM ledger.chain_heads h
         WHERE NOT EXISTS (
            SELECT FROM ledger.checkpoint_heads s WHERE s.chain_key = h.chain_key AND s.chain_seq = h.chain_seq
         )
         ORDER BY h.chain_key
      ) AS m;
    top := greatest(top, coalesce(prev.max_position, 0));
    new_digest := ledger.checkpoint_digest(
        coalesce(prev.digest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
        new_id, top, keys, seqs, hashes
    );
    INSERT INTO ledger.checkpoints (checkpoint_id, max_position, chains, prev_digest, digest, horizon)
    VALUES (
        new_id, top, cardinality(keys),
        coalesce(prev.digest, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea),
        new_digest, seen
    );
    INSERT INTO ledger.checkpoint_heads (checkpoint_id, chain_key, chain_seq, head_hash, head_position)
    SELECT new_id, k, q, decode(x, 'hex'), p FROM unnest(keys, seqs, hashes, positions) AS u(k, q, x, p);
    RETURN QUERY SELECT new_id, cardinality(keys), top, new_digest;
END
$$;

-- The check of sealed heads, as before, but the digest check (ledger.checkpoint_problem, which
-- aggregates and sorts every head of the checkpoint) runs once per checkpoint, not once per head.
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
      LEFT JOIN ledger.events e ON e.chain_key = a.chain_key AND e.chain_seq = a.chain_seq
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

-- Months whose partitions were exported, checked against the database and detached by
-- `reservations ledger archive`: the export's digest and row count, the checkpoint that sealed
-- them, and each chain's last archived row (where verification picks the chain up again).
CREATE TABLE ledger.archives (
    month date PRIMARY KEY CHECK (month = date_trunc('month', month)),
    checkpoint_id bigint NOT NULL REFERENCES ledger.checkpoints,
    row_count bigint NOT NULL,
    first_position bigint,
    last_position bigint,
    file_name text NOT NULL,
    sha256 bytea NOT NULL,
    manifest jsonb NOT NULL,
    -- Whether the month's partition was detached (a ledger that is not partitioned keeps the rows).
    detached boolean NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TRIGGER archives_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.archives
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Each chain's last archived row of each archived month: where verification picks the chain up
-- again once the month is no longer in ledger.events.
CREATE TABLE ledger.archive_heads (
    month date NOT NULL REFERENCES ledger.archives,
    chain_key text NOT NULL,
    chain_seq bigint NOT NULL,
    row_hash bytea NOT NULL,
    head_position bigint NOT NULL,
    PRIMARY KEY (chain_key, month)
);

CREATE TRIGGER archive_heads_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger.archive_heads
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

REVOKE ALL ON ledger.archives, ledger.archive_heads FROM PUBLIC;
GRANT SELECT ON ledger.archives, ledger.archive_heads TO reservations_writer, reservations_reader;
