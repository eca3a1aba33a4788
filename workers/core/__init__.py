"""The pure core: parameter catalogue, state machine, and (later) action model and retry policy.

Nothing in this package performs I/O; the edges (emulator, gateway, ledger, intake, CLI) build on it.
"""
