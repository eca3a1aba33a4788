"""Replay the ledger: rebuild the projection, redrive (a reservation's timeline is
``workers.audit.timeline``).

``rebuild`` reads the ledger alone; ``redrive`` takes the whole messages of
failed and dead-lettered actions from ``reservations.dead`` (the ledger keeps PII only as keyed
hashes) and sends them round the full protocol again under new action ids.
"""
