"""Replay the ledger: rebuild the projection, reconstruct a reservation's timeline, redrive.

``rebuild`` and ``timeline`` read the ledger alone; ``redrive`` takes the whole messages of
failed and dead-lettered actions from ``reservations.dead`` (the ledger keeps PII only as keyed
hashes) and sends them round the full protocol again under new action ids.
"""
