-- The governor's named queries (workers.ledger.leases), loaded once. One heartbeat is one
-- transaction: lock the account's budget row, drop expired leases, read the live ones, renew ours,
-- store the budget. Times are the database's clock, so that hosts need not agree on theirs.

-- name: open_budget
-- The account's budget row, created at the ceiling the first time any process asks.
INSERT INTO ledger.taskrouter_budget (account_sid, current, updated_at, hold_until)
VALUES (%(account_sid)s, %(ceiling)s, clock_timestamp(), clock_timestamp())
ON CONFLICT (account_sid) DO NOTHING;

-- name: lock_budget
-- The budget, locked until the heartbeat commits (heartbeats of one account take turns), in
-- seconds since the epoch, with the database's time now.
SELECT current,
       extract(epoch FROM updated_at)::float8 AS updated_at,
       extract(epoch FROM decreased_at)::float8 AS decreased_at,
       extract(epoch FROM hold_until)::float8 AS hold_until,
       extract(epoch FROM clock_timestamp())::float8 AS now
  FROM ledger.taskrouter_budget
 WHERE account_sid = %(account_sid)s
   FOR UPDATE;

-- name: expire_leases
-- Leases nobody renewed in time (their process died or lost the database): their share is free.
DELETE FROM ledger.taskrouter_leases
 WHERE account_sid = %(account_sid)s AND expires_at < clock_timestamp()
RETURNING holder;

-- name: live_leases
SELECT holder, demand, granted, in_flight
  FROM ledger.taskrouter_leases
 WHERE account_sid = %(account_sid)s;

-- name: renew_lease
INSERT INTO ledger.taskrouter_leases
       (account_sid, holder, demand, granted, in_flight, renewed_at, expires_at)
VALUES (%(account_sid)s, %(holder)s, %(demand)s, %(granted)s, %(in_flight)s, clock_timestamp(),
        clock_timestamp() + make_interval(secs => %(ttl)s))
ON CONFLICT (account_sid, holder) DO UPDATE
   SET demand = EXCLUDED.demand, granted = EXCLUDED.granted, in_flight = EXCLUDED.in_flight,
       renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at;

-- name: store_budget
UPDATE ledger.taskrouter_budget
   SET current = %(current)s, updated_at = to_timestamp(%(updated_at)s),
       decreased_at = to_timestamp(%(decreased_at)s), hold_until = to_timestamp(%(hold_until)s)
 WHERE account_sid = %(account_sid)s;

-- name: drop_lease
-- A process that stops gives its share back at once rather than let it expire.
DELETE FROM ledger.taskrouter_leases WHERE account_sid = %(account_sid)s AND holder = %(holder)s;

-- name: leases
-- What operators read: the budget and every lease, live or not yet expired.
SELECT l.holder, l.demand, l.granted, l.in_flight, l.renewed_at, l.expires_at,
       l.expires_at < clock_timestamp() AS expired
  FROM ledger.taskrouter_leases AS l
 WHERE l.account_sid = %(account_sid)s
 ORDER BY l.holder;
