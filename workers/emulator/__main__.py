"""``python -m workers.emulator``: the same command as ``reservations emulator``."""

from workers.cli.emulator import emulator

emulator(prog_name="reservations emulator")
