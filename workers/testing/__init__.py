"""Developer tools, fenced off from the product: nothing outside this package and the ``reservations
emulator`` and ``reservations demo`` commands may import it (ruff's TID251 bans it, pyproject.toml).

- ``emulator``: a local TaskRouter Reservation API (aiohttp, the ``[emulator]`` extra) for the tests,
  the demo, the benchmarks and anyone testing their own TaskRouter code.
- ``demo``: ``reservations demo``, the whole system end to end on this machine's services.
- ``processes``: real Celery worker processes (and the emulator as a subprocess) for tests, the demo
  and the benchmarks.
- ``benchmarks``, ``scale``: what the ledger benchmarks under ops/ share, and the 10 M-row loader.
- ``cli``: the ``reservations emulator`` and ``reservations demo`` commands, which
  ``workers.cli`` imports only when they run.
"""
