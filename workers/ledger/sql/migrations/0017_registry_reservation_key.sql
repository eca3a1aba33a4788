-- 0017: the registry's reservation index on a 64-bit key (issue 19: bytes per action).
--
-- (0015 and 0016 were built and taken back on 2026-12-01, ops/LEDGER.md "Bytes per action": their
-- numbers are not used again, so a ledger that applied them is refused as one this release does not
-- know, never taken for another.)
--
-- actions_reservation held each action's reservation SID as text (a 34-character SID; built at
-- once over a million actions, 38.6 MB against 20.3 MB for the key). It is what lets `replay
-- redrive --reservation` reach a reservation's actions, those whose received row is in an archived
-- month included (the registry is never archived). It now holds ledger.key64(reservation_sid), as
-- the registry's task and correlation indexes and the ledger's chain, task, worker and correlation
-- indexes do: its one reader (queries.sql, settled_actions) matches the key and the text, so a
-- collision costs a row read, never a wrong row.
--
-- The new index is built first, under another name (a SHARE lock: the registry's readers go on,
-- its writers wait for the build, 0.9 s a million actions on a 2-core machine), then the old one
-- is dropped and the new one renamed, which needs ACCESS EXCLUSIVE until the commit right after:
-- a moment, readers included. Neither lock is waited for more than 10 s (a long reader, such as
-- `replay rebuild`, would otherwise queue every query behind the migration): the migration then
-- fails, changing nothing, and is run again.
SET LOCAL ROLE reservations_owner;
SET LOCAL lock_timeout = '10s';

CREATE INDEX actions_reservation_key ON ledger.actions (ledger.key64(reservation_sid));
DROP INDEX ledger.actions_reservation;
ALTER INDEX ledger.actions_reservation_key RENAME TO actions_reservation;
