-- 0016: the registry's index of reservations goes (issue 19: about 90 bytes and an index entry per
-- action less). Its one reader was redrive's selection of one reservation's settled actions
-- (queries.sql, settled_actions): that now takes the action ids from the reservation's chain (the
-- chain index; an action's received or rejected_input row is in its reservation's chain), then
-- the registry by its primary key (settled_actions_of_reservation). Every other registry look-up
-- is by action_id.
SET LOCAL ROLE reservations_owner;

DROP INDEX ledger.actions_reservation;
