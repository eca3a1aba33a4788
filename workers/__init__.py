"""Reservation workers: apply Twilio TaskRouter reservation actions exactly once.

Layout, from the inside out:

- ``workers.core``: the pure core (parameter catalogue, state machine, action model, retry policy).
- ``workers.ledger``: the PostgreSQL ledger (append-only, tamper-evident, replayable).
- ``workers.cli``: the ``reservations`` command.
- ``workers.testing``: developer tools kept out of the product: the TaskRouter emulator, the demo,
  worker processes for tests.
"""

__version__ = "0.1.0"
