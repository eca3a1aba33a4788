"""``python -m workers.testing.emulator``: the same command as ``reservations emulator``."""

from workers.testing.cli.emulator import emulator

emulator(prog_name="reservations emulator")
