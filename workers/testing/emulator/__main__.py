"""``python -m workers.testing.emulator``: the same command as ``reservations emulator``."""

from workers.testing.emulator.command import emulator

emulator(prog_name="reservations emulator")
