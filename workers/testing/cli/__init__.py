"""The ``reservations`` subcommands that launch the developer tools (registered by name in
``workers.cli.SUBCOMMANDS``, imported only when they run)."""
