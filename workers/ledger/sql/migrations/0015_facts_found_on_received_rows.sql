-- 0015: a task's or a correlation id's actions are found on their received rows, not through
-- indexes of the registry (issue 19: about 100 bytes and two index entries per action less).
--
-- Since 0012 an action's rows after its received row do not repeat its task or correlation id,
-- and the history by task or correlation id found the action's other rows through
-- ledger.actions (actions_task, actions_correlation), then events_action. The received row stores
-- both (the chain covers them), and events_task and events_correlation index it: the history now
-- takes the action ids from there (workers/ledger/reader.py), and the two registry indexes, which
-- nothing else reads, go. The registry keeps its columns: readers still fill a row's facts from
-- its registry entry (queries.sql, row_columns).
SET LOCAL ROLE reservations_owner;

DROP INDEX ledger.actions_correlation, ledger.actions_task;
