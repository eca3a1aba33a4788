-- 0007: the account-wide TaskRouter concurrency governor (workers.taskrouter.governor): one budget
-- per Twilio account and the leases of the worker processes that share it. Not ledger rows: these
-- are updated in place and expire, and nothing in them is evidence.
SET LOCAL ROLE reservations_owner;

-- The fleet's budget of TaskRouter requests in flight, moved by workers.core.governor (additive
-- increase, multiplicative decrease on 429). One row per account; heartbeats lock it to take turns.
CREATE TABLE ledger.taskrouter_budget (
    account_sid  text PRIMARY KEY CHECK (account_sid ~ '^AC[0-9a-fA-F]{32}$'),
    current      double precision NOT NULL CHECK (current >= 1),
    updated_at   timestamptz NOT NULL,
    decreased_at timestamptz,
    hold_until   timestamptz NOT NULL
);

-- A worker process's share of the budget: what it asked for (demand), what it may have in flight
-- (granted, never less than what it had in flight when it renewed), until expires_at. A process
-- that dies stops renewing: its lease expires and the next heartbeat of any other deletes it.
CREATE TABLE ledger.taskrouter_leases (
    account_sid text NOT NULL REFERENCES ledger.taskrouter_budget (account_sid),
    holder      text NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    demand      integer NOT NULL CHECK (demand >= 0),
    granted     integer NOT NULL CHECK (granted >= 0),
    in_flight   integer NOT NULL CHECK (in_flight >= 0),
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (account_sid, holder)
);

-- The workers' role renews and drops leases and moves the budget; nothing else of the ledger
-- changes for it. Operators read both (the runbook has the query).
REVOKE ALL ON ledger.taskrouter_budget, ledger.taskrouter_leases FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON ledger.taskrouter_budget TO reservations_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ledger.taskrouter_leases TO reservations_writer;
GRANT SELECT ON ledger.taskrouter_budget, ledger.taskrouter_leases TO reservations_reader;
