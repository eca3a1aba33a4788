"""Reservation workers: apply Twilio TaskRouter reservation actions exactly once.

Layout, from the inside out:

- ``workers.core``: the pure core (parameter catalogue, state machine, action model, retry policy).
- ``workers.emulator``: a local TaskRouter Reservation API for tests, demos and our users.
- ``workers.ledger``: the PostgreSQL ledger (append-only, tamper-evident, replayable).
- ``workers.cli``: the ``reservations`` command.
"""

__version__ = "0.1.0"
