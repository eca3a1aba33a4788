"""Reservation workers: apply Twilio TaskRouter reservation actions exactly once.

An action enters at ``workers.broker`` (the intake), is decided by ``workers.core`` (the pure
planner), carried out by ``workers.apply`` through ``workers.taskrouter`` (the gateway), and
recorded in ``workers.ledger``; ``workers.audit``, ``workers.replay`` and ``workers.cli`` read it
back. ``workers.composition`` builds it all once; ``workers.testing`` holds the developer tools.
"""

__version__ = "0.1.0"
