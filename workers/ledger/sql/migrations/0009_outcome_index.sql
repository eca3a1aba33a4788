-- 0009: history by outcome (the audit console's search for failed, indeterminate or dead-lettered
-- actions) reads an index in ledger order instead of walking the whole ledger until it has a page:
-- a rare outcome alone took 300 ms at a million rows. One entry per outcome row, none for the rest.
SET LOCAL ROLE reservations_owner;

CREATE INDEX events_outcome ON ledger.events (outcome, tx_id, position) WHERE outcome IS NOT NULL;
