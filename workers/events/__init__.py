"""TaskRouter's events into the ledger: the events API (``reservations events-api``), its group
commit, and reconciliation from the Events resource (``reservations reconcile``)."""
